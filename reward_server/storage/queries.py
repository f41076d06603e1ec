"""SQL expressions the queue and its statistics share: open jobs, and per-item counts
of ratings and live leases (correlated subqueries on `Item`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import aliased

from reward_server.storage.models import Item, Job, Lease, Rating


def open_job(now: float) -> Any:
    """Jobs still collecting ratings: neither cancelled nor past their deadline."""
    return and_(Job.cancelled_at.is_(None), Job.deadline > now)


def score_count() -> Any:
    """1-10 ratings of the item."""
    r = aliased(Rating)
    return select(func.count(r.id)).where(r.item_id == Item.id).scalar_subquery()


def pair_count(item: Any = Item) -> Any:
    """A/B comparisons the item took part in, as winner or loser."""
    r = aliased(Rating)
    return (
        select(func.count(r.id))
        .where(or_(r.item_id == item.id, r.other_item_id == item.id))
        .scalar_subquery()
    )


def lease_count(now: float) -> Any:
    """Unexpired leases on the item: ratings on their way."""
    lease = aliased(Lease)
    return (
        select(func.count(lease.id))
        .where(lease.item_id == Item.id, lease.expires_at > now)
        .scalar_subquery()
    )
