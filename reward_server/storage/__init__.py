"""Persistent storage of the human rating queue (SQLAlchemy 2, Alembic-versioned).

SQLite in WAL mode by default (`data_dir/ratings.db`), PostgreSQL when
DATABASE_URL says so. `RatingStore` (store.py) is the entry point; the queue
logic is functions of a session, by concern: `raters`, `jobs`, `queue` (leases
and answers), `stats`, `export`, over the tables in `models`.
"""

from reward_server.storage.errors import QueueError
from reward_server.storage.records import JobView, NewItem, TaskView
from reward_server.storage.store import RatingStore

__all__ = ["JobView", "NewItem", "QueueError", "RatingStore", "TaskView"]
