"""Queue statistics for operators: what waits, who rated how much, how far raters agree."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from reward_server.storage.models import Item, Job, Lease, Rater, Rating
from reward_server.storage.queries import open_job, pair_count, score_count


def waiting_count(session: Session, now: float) -> int:
    """Items of open jobs that still need ratings (leased or not)."""
    total = 0
    for mode, count in (("score", score_count()), ("pair", pair_count())):
        total += session.scalar(
            select(func.count(Item.id))
            .join(Job, Job.id == Item.job_id)
            .where(
                open_job(now),
                Job.mode == mode,
                Item.pairable.is_(True),
                count < Job.ratings_per_item,
            )
        )
    return total


def queue_stats(session: Session, now: float) -> dict[str, int]:
    return {
        "waiting_items": waiting_count(session, now),
        "open_jobs": session.scalar(select(func.count(Job.id)).where(open_job(now))),
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
