"""Exported rating rows -> the ratings of one mode, refusing too few to fit on."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

#: Fewest distinct rated images (score mode) or comparisons (pair mode) worth fitting on.
MIN_SCORED_IMAGES = 10
MIN_PAIRS = 10


class FitError(ValueError):
    """The ratings cannot give a head (too few, wrong mode); the message says what to do."""


class RatingSource(Protocol):
    """What the fitter needs of a rating database (RatingStore has both)."""

    def export_rows(self) -> Iterator[dict[str, Any]]: ...

    def image_for(self, rater_id: int | None, item_id: int) -> bytes | None: ...


@dataclass
class RatingData:
    """The ratings of one mode, by item id (before identical images are merged)."""

    mode: Literal["score", "pair"]
    scores: list[tuple[int, int, str]] = field(default_factory=list)  # item, score, rater
    pairs: list[tuple[int, int, str]] = field(default_factory=list)  # winner, loser, rater

    def item_ids(self) -> list[int]:
        if self.mode == "score":
            ids = (item for item, _, _ in self.scores)
        else:
            ids = (i for w, lo, _ in self.pairs for i in (w, lo))
        return list(dict.fromkeys(ids))


def gather_ratings(rows: Iterable[dict[str, Any]], mode: str = "auto") -> RatingData:
    """Split exported rating rows into 1-10 scores and A/B outcomes; pick the mode."""
    scores: list[tuple[int, int, str]] = []
    pairs: list[tuple[int, int, str]] = []
    for row in rows:
        if row.get("other_item_id") is not None:
            pairs.append((int(row["item_id"]), int(row["other_item_id"]), str(row["rater"])))
        elif row.get("score") is not None:
            scores.append((int(row["item_id"]), int(row["score"]), str(row["rater"])))
    if mode == "auto":
        if not scores and not pairs:
            raise FitError(
                "too few ratings: the database has none yet; fitting needs 1-10 ratings of at "
                f"least {MIN_SCORED_IMAGES} images (scorer `human`) or at least {MIN_PAIRS} A/B "
                "comparisons (scorer `human_pairwise`), collected on /rate"
            )
        mode = "score" if scores else "pair"
    if mode not in ("score", "pair"):
        raise FitError(f"mode must be auto, score or pair, not {mode!r}")
    if mode == "score" and len({item for item, _, _ in scores}) < MIN_SCORED_IMAGES:
        raise FitError(
            f"too few ratings: score mode needs 1-10 ratings of at least {MIN_SCORED_IMAGES} "
            f"images, the database has {len(scores)} rating(s) of "
            f"{len({item for item, _, _ in scores})} image(s) (and {len(pairs)} A/B "
            "comparison(s)); collect more on /rate (scorer `human`)"
        )
    if mode == "pair" and len(pairs) < MIN_PAIRS:
        raise FitError(
            f"too few ratings: pair mode needs at least {MIN_PAIRS} A/B comparisons, the "
            f"database has {len(pairs)} (and {len(scores)} 1-10 rating(s)); collect more on "
            "/rate (scorer `human_pairwise`)"
        )
    if mode == "score":
        return RatingData("score", scores=scores)
    return RatingData("pair", pairs=pairs)
