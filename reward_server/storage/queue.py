"""The queue: leasing tasks to raters and taking their answers (functions of a Session).

Leasing rule (score mode): an item can be handed to a rater while its
ratings plus unexpired leases are fewer than k, and that rater has not rated
it yet; the item with the earliest job deadline, then the fewest ratings,
goes first, so old jobs finish and no item starves. Callers run `claim_task`
and `submit_rating` under the write lock (see `db.take_write_lock`), which
makes the count-then-insert atomic: no item ever gets more than k ratings.

Pair mode (A/B): the leased "focal" item obeys the same rule; its partner is
another image of the same job with the same prompt (the one compared least
often), which may end up with more than k comparisons: pairs cannot always
be split evenly.
"""

from __future__ import annotations

import random
import secrets

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session, aliased

from reward_server.storage.errors import QueueError
from reward_server.storage.models import Item, Job, Lease, Rating
from reward_server.storage.queries import lease_count, open_job, pair_count, score_count
from reward_server.storage.records import Mode, TaskItem, TaskView

SCORE_MIN, SCORE_MAX = 1, 10
#: Expired leases are kept this long, so a rater who answers late is still recognised.
LEASE_GRACE_S = 3600.0


def _candidate(session: Session, mode: Mode, rater_id: int, now: float) -> Item | None:
    """The next item this rater may take in `mode`, by the leasing rule in the module doc."""
    count = score_count() if mode == "score" else pair_count()
    query = (
        select(Item)
        .join(Job, Job.id == Item.job_id)
        .where(
            open_job(now),
            Job.mode == mode,
            Item.pairable.is_(True),
            count + lease_count(now) < Job.ratings_per_item,
        )
        .order_by(Job.deadline, count, Item.position)
        .limit(1)
    )
    if mode == "score":
        mine = aliased(Rating)
        query = query.where(
            ~select(mine.id).where(mine.item_id == Item.id, mine.rater_id == rater_id).exists()
        )
    return session.scalar(query)


def _partner(session: Session, focal: Item) -> Item | None:
    """The same prompt's image that was compared with `focal`, then at all, least often."""
    r = aliased(Rating)
    together = (
        select(func.count(r.id))
        .where(
            or_(
                and_(r.item_id == focal.id, r.other_item_id == Item.id),
                and_(r.item_id == Item.id, r.other_item_id == focal.id),
            )
        )
        .scalar_subquery()
    )
    return session.scalar(
        select(Item)
        .where(Item.job_id == focal.job_id, Item.prompt == focal.prompt, Item.id != focal.id)
        .order_by(together, pair_count(), func.random())
        .limit(1)
    )


def claim_task(
    session: Session,
    rater_id: int,
    now: float,
    lease_s: float,
    mode: Mode | None = None,
) -> Lease | None:
    """Lease the next task to this rater (or return the one it already holds); None if idle.

    Run under the write lock.
    """
    session.execute(delete(Lease).where(Lease.expires_at <= now - LEASE_GRACE_S))
    held = select(Lease).join(Item, Item.id == Lease.item_id).join(Job, Job.id == Item.job_id)
    held = held.where(Lease.rater_id == rater_id, Lease.expires_at > now, open_job(now))
    if mode is not None:
        held = held.where(Job.mode == mode)
    lease = session.scalar(held.order_by(Lease.id).limit(1))
    if lease is not None:
        return lease
    options = [m for m in ("score", "pair") if mode in (None, m)]
    best: tuple[float, Item, str] | None = None
    for m in options:
        item = _candidate(session, m, rater_id, now)  # type: ignore[arg-type]
        if item is None:
            continue
        deadline = session.scalar(select(Job.deadline).where(Job.id == item.job_id))
        if best is None or deadline < best[0]:
            best = (deadline, item, m)
    if best is None:
        return None
    _, item, m = best
    other = _partner(session, item) if m == "pair" else None
    if m == "pair" and other is None:
        return None
    lease = Lease(
        token=secrets.token_urlsafe(24),
        rater_id=rater_id,
        item_id=item.id,
        other_item_id=other.id if other is not None else None,
        swapped=bool(other is not None and random.random() < 0.5),
        created_at=now,
        expires_at=now + lease_s,
    )
    session.add(lease)
    session.flush()
    return lease


def task_view(session: Session, lease: Lease) -> TaskView:
    item = session.get(Item, lease.item_id)
    assert item is not None
    job = session.get(Job, item.job_id)
    assert job is not None
    items = [TaskItem(item.id, item.prompt)]
    if lease.other_item_id is not None:
        other = session.get(Item, lease.other_item_id)
        assert other is not None
        items.append(TaskItem(other.id, other.prompt))
        if lease.swapped:
            items.reverse()
    return TaskView(lease.token, job.mode, job.id, lease.expires_at, items)


def submit_rating(
    session: Session,
    rater_id: int,
    lease_token: str,
    now: float,
    score: int | None = None,
    choice: str | None = None,
) -> Rating:
    """Store the answer to a lease. Run under the write lock; commit acknowledges it.

    A repeated submit of the same lease returns the stored rating (idempotent),
    so a rater whose answer got lost on the way back can safely retry.
    """
    done = session.scalar(select(Rating).where(Rating.lease_token == lease_token))
    if done is not None:
        if done.rater_id != rater_id:
            raise QueueError("this task belongs to another rater", 403)
        return done
    lease = session.scalar(select(Lease).where(Lease.token == lease_token))
    if lease is None:
        raise QueueError("unknown or expired task; load the next one", 404)
    if lease.rater_id != rater_id:
        raise QueueError("this task belongs to another rater", 403)
    item = session.get(Item, lease.item_id)
    assert item is not None
    job = session.get(Job, item.job_id)
    assert job is not None
    if job.cancelled_at is not None or now >= job.deadline:
        session.delete(lease)
        raise QueueError("this job has expired; its ratings are no longer needed", 410)
    if job.mode == "score":
        if score is None or not SCORE_MIN <= score <= SCORE_MAX or choice is not None:
            raise QueueError(f"send a score from {SCORE_MIN} to {SCORE_MAX}", 422)
        if lease.expires_at <= now:
            # The lease lapsed: accept only if the item still has room for a rating.
            taken = session.scalar(
                select(func.count(Rating.id)).where(Rating.item_id == item.id)
            ) + session.scalar(
                select(func.count(Lease.id)).where(
                    Lease.item_id == item.id, Lease.expires_at > now, Lease.id != lease.id
                )
            )
            if taken >= job.ratings_per_item:
                session.delete(lease)
                raise QueueError("your time on this item ran out and others rated it", 409)
        rating = Rating(
            job_id=job.id,
            item_id=item.id,
            rater_id=rater_id,
            score=int(score),
            lease_token=lease_token,
            created_at=now,
        )
    else:
        if choice not in ("a", "b") or score is not None:
            raise QueueError("send choice 'a' or 'b'", 422)
        assert lease.other_item_id is not None
        a, b = lease.item_id, lease.other_item_id
        if lease.swapped:
            a, b = b, a
        winner, loser = (a, b) if choice == "a" else (b, a)
        rating = Rating(
            job_id=job.id,
            item_id=winner,
            other_item_id=loser,
            rater_id=rater_id,
            lease_token=lease_token,
            created_at=now,
        )
    session.add(rating)
    session.delete(lease)
    session.flush()
    return rating


def release_lease(session: Session, rater_id: int, lease_token: str) -> bool:
    """Give a task back unanswered (the rater skipped it)."""
    result = session.execute(
        delete(Lease).where(Lease.token == lease_token, Lease.rater_id == rater_id)
    )
    return bool(result.rowcount)


def may_view_item(session: Session, rater_id: int, item_id: int, now: float) -> bool:
    """Raters see only images they hold a lease on: no browsing the whole queue."""
    lease = select(Lease.id).where(
        Lease.rater_id == rater_id,
        Lease.expires_at > now,
        or_(Lease.item_id == item_id, Lease.other_item_id == item_id),
    )
    return session.scalar(lease.limit(1)) is not None


def item_image(session: Session, item_id: int) -> bytes | None:
    return session.scalar(select(Item.image_png).where(Item.id == item_id))
