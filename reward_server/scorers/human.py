"""`human` and `human_pairwise`: scorers whose scores come from people, via a rating queue.

They are job scorers (kind "job"): POST /v1/jobs queues the images, raters
score them on /rate, and GET /v1/jobs/{id} reports the scores. Calling their
`score` directly is an error, since no answer can come back within a request.
The rating store is handed in by whoever builds them, and closed by its owner
(the app's runtime), not by the scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from reward_server.scorers.base import Scorer
from reward_server.settings import ServerSettings

if TYPE_CHECKING:
    from reward_server.storage import NewItem, RatingStore


class HumanScorer(Scorer):
    """A rating queue in one mode: 1-10 scores (`score`) or A/B comparisons (`pair`)."""

    kind = "job"
    version = "1"
    max_batch_size = 256

    def __init__(self, store: RatingStore, mode: str = "score", ratings_per_item: int = 1) -> None:
        if mode not in ("score", "pair"):
            raise ValueError(f"mode must be 'score' or 'pair', not {mode!r}")
        self.store = store
        self.mode = mode
        self.ratings_per_item = ratings_per_item
        if mode == "score":
            self.description = (
                f"People rate each image 1-10 on /rate; score = mean of {ratings_per_item} "
                "rating(s). Submit with POST /v1/jobs."
            )
        else:
            self.description = (
                "People pick the better of two images of the same prompt on /rate; score = "
                f"Bradley-Terry log-strength after {ratings_per_item} comparison(s) per image. "
                "Submit with POST /v1/jobs."
            )

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        raise RuntimeError(f"{self.name or 'human'} is a job scorer: use POST /v1/jobs")

    def create_job(
        self, scorer: str, items: Sequence[NewItem], lifetime_s: float
    ) -> tuple[str, float]:
        """Queue items for rating under the name `scorer`; returns job id and deadline."""
        return self.store.create_job(
            scorer,
            self.mode,  # type: ignore[arg-type]
            self.ratings_per_item,
            items,
            lifetime_s,
        )


def build(settings: ServerSettings, store: RatingStore) -> HumanScorer:
    return HumanScorer(store, "score", settings.ratings_per_item)


def build_pairwise(settings: ServerSettings, store: RatingStore) -> HumanScorer:
    return HumanScorer(store, "pair", settings.ratings_per_item)
