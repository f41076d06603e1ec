"""Queue operations on the rating database: functions of a Session and the current time.

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

import hashlib
import itertools
import json
import math
import random
import secrets
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session, aliased

from reward_server.storage.models import Item, Job, Lease, Rater, Rating

Mode = Literal["score", "pair"]
SCORE_MIN, SCORE_MAX = 1, 10
#: Expired leases are kept this long, so a rater who answers late is still recognised.
LEASE_GRACE_S = 3600.0


class QueueError(Exception):
    """A queue operation was refused; `status` is the HTTP status it maps to."""

    status = 409

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status


@dataclass(frozen=True)
class NewItem:
    external_id: str
    prompt: str
    image_png: bytes
    metadata: dict[str, Any]


@dataclass(frozen=True)
class JobView:
    job_id: str
    scorer: str
    mode: str
    status: Literal["pending", "done", "expired"]
    scores: list[float | None]
    num_ratings: list[int]
    ratings_per_item: int
    deadline: float


@dataclass(frozen=True)
class TaskItem:
    item_id: int
    prompt: str


@dataclass(frozen=True)
class TaskView:
    """What a rater sees: one item (score mode) or two, A then B (pair mode)."""

    lease_token: str
    mode: str
    job_id: str
    expires_at: float
    items: list[TaskItem]


# -- tokens and raters ---------------------------------------------------------------


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


# -- jobs ----------------------------------------------------------------------------


def create_job(
    session: Session,
    scorer: str,
    mode: Mode,
    ratings_per_item: int,
    items: Sequence[NewItem],
    now: float,
    deadline: float,
) -> Job:
    if mode not in ("score", "pair"):
        raise ValueError(f"unknown mode {mode!r}")
    prompts = [it.prompt for it in items]
    job = Job(
        id=uuid.uuid4().hex,
        scorer=scorer,
        mode=mode,
        ratings_per_item=ratings_per_item,
        num_items=len(items),
        created_at=now,
        deadline=deadline,
    )
    session.add(job)
    session.flush()
    session.add_all(
        Item(
            job_id=job.id,
            position=i,
            external_id=it.external_id,
            prompt=it.prompt,
            metadata_json=json.dumps(it.metadata),
            image_png=it.image_png,
            pairable=mode == "score" or prompts.count(it.prompt) > 1,
        )
        for i, it in enumerate(items)
    )
    session.flush()
    return job


def cancel_job(session: Session, job_id: str, now: float) -> bool:
    job = session.get(Job, job_id)
    if job is None:
        return False
    if job.cancelled_at is None:
        job.cancelled_at = now
        session.execute(
            delete(Lease).where(Lease.item_id.in_(select(Item.id).where(Item.job_id == job_id)))
        )
    return True


def bradley_terry(
    n: int, wins: Sequence[tuple[int, int]], prior: float = 1.0, iters: int = 200
) -> list[float]:
    """Log-strengths of n items from (winner, loser) index pairs.

    Each item also plays a reference of strength 1 and gets `prior` virtual wins
    and losses against it: undefeated items stay finite, and a score is the
    log-odds of beating that reference (0 = even). Fitted by the MM algorithm.
    """
    strength = [1.0] * n
    won = [prior] * n
    games: dict[tuple[int, int], int] = defaultdict(int)
    for w, lo in wins:
        won[w] += 1
        games[(min(w, lo), max(w, lo))] += 1
    for _ in range(iters):
        denom = [2 * prior / (s + 1.0) for s in strength]
        for (i, j), count in games.items():
            shared = count / (strength[i] + strength[j])
            denom[i] += shared
            denom[j] += shared
        new = [won[i] / denom[i] for i in range(n)]
        delta = max(abs(a - b) for a, b in zip(new, strength, strict=True)) if n else 0.0
        strength = new
        if delta < 1e-10:
            break
    return [math.log(s) for s in strength]


def job_view(session: Session, job_id: str, now: float) -> JobView | None:
    job = session.get(Job, job_id)
    if job is None:
        return None
    rows = session.execute(
        select(Item.id, Item.prompt, Item.pairable)
        .where(Item.job_id == job_id)
        .order_by(Item.position)
    ).all()
    index = {row.id: i for i, row in enumerate(rows)}
    k = job.ratings_per_item
    counts = [0] * len(rows)
    scores: list[float | None] = [None] * len(rows)
    if job.mode == "score":
        given: dict[int, list[int]] = defaultdict(list)
        for item_id, score in session.execute(
            select(Rating.item_id, Rating.score).where(Rating.job_id == job_id)
        ):
            given[index[item_id]].append(score)
        for i, values in given.items():
            counts[i] = len(values)
            if len(values) >= k:
                scores[i] = sum(values) / len(values)
    else:
        outcomes = [
            (index[w], index[lo])
            for w, lo in session.execute(
                select(Rating.item_id, Rating.other_item_id).where(Rating.job_id == job_id)
            )
        ]
        for w, lo in outcomes:
            counts[w] += 1
            counts[lo] += 1
        groups: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            groups[row.prompt].append(i)
        for members in groups.values():
            local = {g: j for j, g in enumerate(members)}
            fitted = bradley_terry(
                len(members),
                [(local[w], local[lo]) for w, lo in outcomes if w in local and lo in local],
            )
            for j, g in enumerate(members):
                if counts[g] >= k:
                    scores[g] = fitted[j]
    complete = all(c >= k for c, row in zip(counts, rows, strict=True) if row.pairable)
    if complete:
        status = "done"
    elif job.cancelled_at is not None or now >= job.deadline:
        status = "expired"
    else:
        status = "pending"
    return JobView(
        job_id=job.id,
        scorer=job.scorer,
        mode=job.mode,
        status=status,
        scores=scores,
        num_ratings=counts,
        ratings_per_item=k,
        deadline=job.deadline,
    )


# -- the queue -----------------------------------------------------------------------


def _open_job(now: float) -> Any:
    return and_(Job.cancelled_at.is_(None), Job.deadline > now)


def _score_count() -> Any:
    r = aliased(Rating)
    return select(func.count(r.id)).where(r.item_id == Item.id).scalar_subquery()


def _pair_count(item: Any = Item) -> Any:
    r = aliased(Rating)
    return (
        select(func.count(r.id))
        .where(or_(r.item_id == item.id, r.other_item_id == item.id))
        .scalar_subquery()
    )


def _lease_count(now: float) -> Any:
    lease = aliased(Lease)
    return (
        select(func.count(lease.id))
        .where(lease.item_id == Item.id, lease.expires_at > now)
        .scalar_subquery()
    )


def _candidate(session: Session, mode: Mode, rater_id: int, now: float) -> Item | None:
    """The next item this rater may take in `mode`, by the leasing rule in the module doc."""
    count = _score_count() if mode == "score" else _pair_count()
    query = (
        select(Item)
        .join(Job, Job.id == Item.job_id)
        .where(
            _open_job(now),
            Job.mode == mode,
            Item.pairable.is_(True),
            count + _lease_count(now) < Job.ratings_per_item,
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
        .order_by(together, _pair_count(), func.random())
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
    held = held.where(Lease.rater_id == rater_id, Lease.expires_at > now, _open_job(now))
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


# -- statistics and export -----------------------------------------------------------


def waiting_count(session: Session, now: float) -> int:
    """Items of open jobs that still need ratings (leased or not)."""
    total = 0
    for mode, count in (("score", _score_count()), ("pair", _pair_count())):
        total += session.scalar(
            select(func.count(Item.id))
            .join(Job, Job.id == Item.job_id)
            .where(
                _open_job(now),
                Job.mode == mode,
                Item.pairable.is_(True),
                count < Job.ratings_per_item,
            )
        )
    return total


def queue_stats(session: Session, now: float) -> dict[str, int]:
    return {
        "waiting_items": waiting_count(session, now),
        "open_jobs": session.scalar(select(func.count(Job.id)).where(_open_job(now))),
        "active_leases": session.scalar(select(func.count(Lease.id)).where(Lease.expires_at > now)),
        "ratings": session.scalar(select(func.count(Rating.id))),
        "raters": session.scalar(select(func.count(Rater.id)).where(Rater.revoked_at.is_(None))),
    }


def rater_stats(session: Session) -> list[dict[str, Any]]:
    """Per rater: how many ratings, their mean score, and how far they sit from the others."""
    names = {rid: name for rid, name in session.execute(select(Rater.id, Rater.name))}
    revoked = set(session.scalars(select(Rater.id).where(Rater.revoked_at.is_not(None))))
    by_item: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[int, int] = defaultdict(int)
    last: dict[int, float] = {}
    for item_id, rater_id, score, created in session.execute(
        select(Rating.item_id, Rating.rater_id, Rating.score, Rating.created_at)
    ):
        counts[rater_id] += 1
        last[rater_id] = max(last.get(rater_id, 0.0), created)
        if score is not None:
            by_item[item_id][rater_id].append(score)
    out = []
    for rater_id, name in names.items():
        mine = [s for raters in by_item.values() for s in raters.get(rater_id, [])]
        diffs = []
        for raters in by_item.values():
            if rater_id in raters and len(raters) > 1:
                others = [s for r, ss in raters.items() if r != rater_id for s in ss]
                own = sum(raters[rater_id]) / len(raters[rater_id])
                diffs.append(abs(own - sum(others) / len(others)))
        out.append(
            {
                "name": name,
                "ratings": counts.get(rater_id, 0),
                "mean_score": sum(mine) / len(mine) if mine else None,
                "mean_abs_diff_to_others": sum(diffs) / len(diffs) if diffs else None,
                "shared_items": len(diffs),
                "last_rating_at": last.get(rater_id),
                "revoked": rater_id in revoked,
            }
        )
    return out


def agreement(session: Session) -> dict[str, Any]:
    """Inter-rater agreement over items (or pairs) judged by more than one rater.

    Scores: mean absolute difference and share within one point, over every
    two ratings of an item by different raters. Pairs: share of two judgments
    of the same pair, by different raters, that picked the same image.
    """
    scored: dict[int, list[tuple[int, int]]] = defaultdict(list)
    pairs: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for item_id, other_id, rater_id, score in session.execute(
        select(Rating.item_id, Rating.other_item_id, Rating.rater_id, Rating.score)
    ):
        if other_id is None:
            scored[item_id].append((rater_id, score))
        else:
            pairs[(min(item_id, other_id), max(item_id, other_id))].append((rater_id, item_id))
    diffs = [
        abs(a[1] - b[1])
        for ratings in scored.values()
        for a, b in itertools.combinations(ratings, 2)
        if a[0] != b[0]
    ]
    same = [
        a[1] == b[1]
        for judged in pairs.values()
        for a, b in itertools.combinations(judged, 2)
        if a[0] != b[0]
    ]
    return {
        "score_pairs": len(diffs),
        "score_mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
        "score_within_one": sum(d <= 1 for d in diffs) / len(diffs) if diffs else None,
        "ab_pairs": len(same),
        "ab_agreement": sum(same) / len(same) if same else None,
    }


def iter_export_rows(session: Session) -> Iterator[dict[str, Any]]:
    """Every rating with its rater, job and item(s), oldest first.

    Pair ratings: `item_*` is the image that won, `other_*` the one it beat.
    """
    other = aliased(Item)
    query = (
        select(
            Rating.id,
            Rating.created_at,
            Rater.name,
            Rating.job_id,
            Job.scorer,
            Job.mode,
            Item.id,
            Item.external_id,
            Item.prompt,
            Item.metadata_json,
            Rating.score,
            other.id,
            other.external_id,
        )
        .join(Rater, Rater.id == Rating.rater_id)
        .join(Job, Job.id == Rating.job_id)
        .join(Item, Item.id == Rating.item_id)
        .outerjoin(other, other.id == Rating.other_item_id)
        .order_by(Rating.id)
        .execution_options(yield_per=500)
    )
    keys = (
        "rating_id",
        "created_at",
        "rater",
        "job_id",
        "scorer",
        "mode",
        "item_id",
        "external_id",
        "prompt",
        "metadata",
        "score",
        "other_item_id",
        "other_external_id",
    )
    for row in session.execute(query):
        record = dict(zip(keys, row, strict=True))
        record["metadata"] = json.loads(record["metadata"] or "{}")
        yield record
