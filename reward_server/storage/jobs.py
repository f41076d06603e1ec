"""Rating jobs: queue a batch of images, cancel it, and read its progress and scores.

A score-mode item's score is the mean of its ratings; a pair-mode item's is its
Bradley-Terry log-strength among the images of its job sharing its prompt, and its
wins (comparisons it won) are reported beside, for learners that take the
preferences themselves.
Either is reported once the item has its k ratings.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from reward_server.bradley_terry import bradley_terry
from reward_server.storage.models import Item, Job, Lease, Rating
from reward_server.storage.records import JobView, Mode, NewItem


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
    wins: list[int] | None = None
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
        wins = [0] * len(rows)
        for w, lo in outcomes:
            counts[w] += 1
            counts[lo] += 1
            wins[w] += 1
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
        wins=wins,
    )
