"""Plain values that cross the store's boundary: ORM objects never leave a session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["score", "pair"]


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
    wins: list[int] | None = None  # pair mode: comparisons each item won


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
