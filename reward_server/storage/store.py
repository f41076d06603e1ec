"""`RatingStore`: one database, its transactions, and the queue operations on it.

Every method is a short transaction of its own (blocking; the web app calls
them from worker threads). Writes that count before inserting run under the
write lock, and a method returns only after its commit: a rating the server
acknowledged is on disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from reward_server.storage import export, jobs, queue, raters, stats
from reward_server.storage.db import create_db_engine, migrate, take_write_lock
from reward_server.storage.errors import QueueError
from reward_server.storage.records import JobView, Mode, NewItem, TaskView


class RatingStore:
    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        migrate_schema: bool = True,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.clock = clock
        self.engine: Engine = create_db_engine(url, **(engine_kwargs or {}))
        if migrate_schema:
            migrate(self.engine)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        # On SQLite this engine's transactions start with BEGIN IMMEDIATE (see db.py).
        self._write = sessionmaker(
            self.engine.execution_options(write_lock=True), expire_on_commit=False
        )
        # Writers in this process queue here rather than in SQLite's busy loop.
        self._local_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Any) -> RatingStore:
        return cls(settings.resolved_database_url())

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A transaction holding the queue's write lock; commits on a clean exit."""
        with self._local_lock, self._write() as session, session.begin():
            take_write_lock(session.connection())
            yield session

    @property
    def closed(self) -> bool:
        """True once `close` ran: the engine is disposed and the store must not be used."""
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.engine.dispose()

    # -- raters ------------------------------------------------------------------------

    def add_rater(self, name: str) -> tuple[int, str]:
        """Create a rater; returns its id and the plaintext token (shown once)."""
        with self.writing() as s:
            rater, token = raters.add_rater(s, name, self.clock())
            return rater.id, token

    def find_rater(self, token: str) -> tuple[int, str] | None:
        with self.reading() as s:
            rater = raters.find_rater(s, token)
            return (rater.id, rater.name) if rater is not None else None

    def revoke_rater(self, name: str) -> bool:
        with self.writing() as s:
            return raters.revoke_rater(s, name, self.clock())

    def list_raters(self) -> list[dict[str, Any]]:
        with self.reading() as s:
            return [
                {
                    "id": r.id,
                    "name": r.name,
                    "created_at": r.created_at,
                    "revoked": bool(r.revoked_at),
                }
                for r in raters.list_raters(s)
            ]

    # -- jobs --------------------------------------------------------------------------

    def create_job(
        self,
        scorer: str,
        mode: Mode,
        ratings_per_item: int,
        items: Sequence[NewItem],
        deadline_s: float,
    ) -> tuple[str, float]:
        """Queue a job; returns its id and deadline (Unix seconds)."""
        now = self.clock()
        with self.writing() as s:
            job = jobs.create_job(s, scorer, mode, ratings_per_item, items, now, now + deadline_s)
            return job.id, job.deadline

    def job_view(self, job_id: str) -> JobView | None:
        with self.reading() as s:
            return jobs.job_view(s, job_id, self.clock())

    def cancel_job(self, job_id: str) -> bool:
        with self.writing() as s:
            return jobs.cancel_job(s, job_id, self.clock())

    # -- rating ------------------------------------------------------------------------

    def claim(self, rater_id: int, lease_s: float, mode: Mode | None = None) -> TaskView | None:
        with self.writing() as s:
            lease = queue.claim_task(s, rater_id, self.clock(), lease_s, mode)
            return queue.task_view(s, lease) if lease is not None else None

    def submit(
        self, rater_id: int, lease_token: str, score: int | None = None, choice: str | None = None
    ) -> int:
        """Store a rating and commit; returns the rating id. Raises QueueError."""
        error: QueueError | None = None
        with self.writing() as s:
            try:
                rating = queue.submit_rating(s, rater_id, lease_token, self.clock(), score, choice)
                return rating.id
            except QueueError as exc:
                error = exc  # commit the lease clean-up the refusal may have made
        raise error

    def release(self, rater_id: int, lease_token: str) -> bool:
        with self.writing() as s:
            return queue.release_lease(s, rater_id, lease_token)

    def image_for(self, rater_id: int | None, item_id: int) -> bytes | None:
        """The PNG of an item; with a rater id, only while that rater holds it."""
        with self.reading() as s:
            if rater_id is not None and not queue.may_view_item(s, rater_id, item_id, self.clock()):
                return None
            return queue.item_image(s, item_id)

    # -- statistics --------------------------------------------------------------------

    def waiting(self) -> int:
        with self.reading() as s:
            return stats.waiting_count(s, self.clock())

    def stats(self) -> dict[str, Any]:
        with self.reading() as s:
            return {
                "queue": stats.queue_stats(s, self.clock()),
                "raters": stats.rater_stats(s),
                "agreement": stats.agreement(s),
            }

    def export_rows(self) -> Iterator[dict[str, Any]]:
        with self.reading() as s:
            yield from export.iter_export_rows(s)
