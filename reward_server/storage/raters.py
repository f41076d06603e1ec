"""Raters and their tokens: create, look up by token, revoke, list."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from reward_server.storage.errors import QueueError
from reward_server.storage.models import Lease, Rater


def hash_token(token: str) -> str:
    """Tokens are stored hashed: a leaked database does not let anyone rate."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_rater(session: Session, name: str, now: float) -> tuple[Rater, str]:
    """Create a rater; return it and the one plaintext copy of its token."""
    name = name.strip()
    if not name:
        raise QueueError("rater name is empty", 422)
    if session.scalar(select(Rater.id).where(Rater.name == name)) is not None:
        raise QueueError(f"a rater named {name!r} already exists")
    token = secrets.token_urlsafe(24)
    rater = Rater(name=name, token_hash=hash_token(token), created_at=now)
    session.add(rater)
    session.flush()
    return rater, token


def find_rater(session: Session, token: str) -> Rater | None:
    """The active rater holding this token, or None."""
    return session.scalar(
        select(Rater).where(Rater.token_hash == hash_token(token), Rater.revoked_at.is_(None))
    )


def revoke_rater(session: Session, name: str, now: float) -> bool:
    rater = session.scalar(select(Rater).where(Rater.name == name))
    if rater is None or rater.revoked_at is not None:
        return False
    rater.revoked_at = now
    session.execute(delete(Lease).where(Lease.rater_id == rater.id))
    return True


def list_raters(session: Session) -> list[Rater]:
    return list(session.scalars(select(Rater).order_by(Rater.id)))
