"""Every rating as a flat record, for `ddpo ratings export` and `ddpo fit-reward`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from reward_server.storage.models import Item, Job, Rater, Rating


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
