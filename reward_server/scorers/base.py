"""The scorer interface every reward implements on the server side."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

from PIL import Image


class ScorerUnavailable(RuntimeError):
    """The scorer cannot be built here (weights not at hand, missing package); says why."""


class ScorerNotReady(RuntimeError):
    """Raised by `score`: the scorer is loaded but cannot score yet (e.g. no reward head
    has been fitted). Unlike a failure this is the operator's to fix, not a bug: the
    server answers 503 with this message instead of 500.
    """


class ScorerUpstreamError(RuntimeError):
    """Raised by `score`: a service the scorer relies on (a VLM judge's API) failed.

    Not this server's bug: answered as 502 (the service errored, was unreachable or
    answered nonsense) or 504 (it timed out), with this message, instead of 500.
    """

    def __init__(self, message: str, status: Literal[502, 504] = 502) -> None:
        super().__init__(message)
        self.status = status


class Scorer(ABC):
    """Scores a batch of decoded RGB images with their prompts.

    `score` runs on the scorer's worker thread with a batch coalesced from
    concurrent requests, so it should be a pure batch function.
    """

    name: str = ""
    version: str = "1"
    description: str = ""
    #: Largest batch the dynamic batcher hands to `score` at once.
    max_batch_size: int = 64
    #: "sync": answers within a request (POST /v1/score). "job": answers later, when
    #: people have rated (POST /v1/jobs, long-polled); such scorers get no batcher.
    kind: Literal["sync", "job"] = "sync"

    @abstractmethod
    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        """Return one float per image (and optional per-item details)."""
