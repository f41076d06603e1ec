"""Engines for the rating database, and schema migration at start-up.

SQLite (the default) runs in WAL mode with synchronous=FULL, so a rating
acknowledged to a rater survives a killed process or a power cut, and page
views read while a rating is written. Write transactions that must count
before they insert (leasing, rating) take the database's write lock up front:
BEGIN IMMEDIATE on SQLite, a transaction-scoped advisory lock on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).with_name("migrations")
#: Arbitrary key of the PostgreSQL advisory lock that serialises queue writes.
_PG_LOCK_KEY = 0x0DD90


def normalize_url(url: str) -> str:
    """Let DATABASE_URL be the usual `postgres://...`; we drive PostgreSQL with psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module, so BEGIN is ours to choose.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("write_lock", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def take_write_lock(conn: Connection) -> None:
    """Serialise this transaction against other queue writers (PostgreSQL).

    On SQLite the lock was taken by BEGIN IMMEDIATE (execution option `write_lock`).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (Alembic); a no-op when it is already there."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        take_write_lock(conn)  # two servers starting together migrate one after the other
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def alembic_config(engine_conn: Connection) -> Any:
    """An Alembic Config bound to a connection, for tests and `alembic revision` work."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = engine_conn
    return cfg
