"""Persistent storage of the human rating queue (SQLAlchemy 2, Alembic-versioned).

SQLite in WAL mode by default (`data_dir/ratings.db`), PostgreSQL when
DATABASE_URL says so. `RatingStore` is the entry point; `repository` holds the
queue logic as functions of a session; `models` the tables.
"""

from reward_server.storage.repository import JobView, NewItem, QueueError, TaskView
from reward_server.storage.store import RatingStore

__all__ = ["JobView", "NewItem", "QueueError", "RatingStore", "TaskView"]
