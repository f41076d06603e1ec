"""Alembic environment: runs on the connection handed over by `storage.db.migrate`.

There is no alembic.ini: the server migrates itself at start-up, and
`alembic` on the command line is not needed to deploy.
"""

from __future__ import annotations

from alembic import context

from reward_server.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through reward_server.storage.db.migrate(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER needs table copies
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
