"""`human` and `human_pairwise`: scorers whose scores come from people, via a rating queue.

They are job scorers (kind "job"): POST /v1/jobs queues the images, raters
score them on /rate, and GET /v1/jobs/{id} reports the scores. Calling their
`score` directly is an error, since no answer can come back within a request.
"""

from __future__ import annotations

import threading
from typing import Any

from PIL import Image

from reward_server.scorers.base import Scorer, ScorerUnavailable
from reward_server.settings import ServerSettings

_stores: dict[str, Any] = {}
_stores_lock = threading.Lock()


def shared_store(settings: ServerSettings) -> Any:
    """One RatingStore per database URL, so both human scorers share an engine."""
    try:
        from reward_server.storage import RatingStore
    except ImportError as exc:  # sqlalchemy/alembic are in the `server` extra
        raise ScorerUnavailable(f"the rating queue needs sqlalchemy and alembic: {exc}") from exc
    url = settings.resolved_database_url()
    with _stores_lock:
        store = _stores.get(url)
        if store is None or store._closed:
            try:
                store = RatingStore(url)
            except Exception as exc:
                raise ScorerUnavailable(f"cannot open the rating database: {exc}") from exc
            _stores[url] = store
        return store


class HumanScorer(Scorer):
    """A rating queue in one mode: 1-10 scores (`score`) or A/B comparisons (`pair`)."""

    kind = "job"
    version = "1"
    max_batch_size = 256

    def __init__(self, store: Any, mode: str = "score", ratings_per_item: int = 1) -> None:
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

    def close(self) -> None:
        self.store.close()


def build(settings: ServerSettings) -> HumanScorer:
    return HumanScorer(shared_store(settings), "score", settings.ratings_per_item)


def build_pairwise(settings: ServerSettings) -> HumanScorer:
    return HumanScorer(shared_store(settings), "pair", settings.ratings_per_item)
