"""The reward protocol (v1): the pydantic models both sides speak.

Everything that crosses the wire between trainer and reward server is one of
these models, so the JSON Schema in docs/protocol.md is generated from here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = "v1"

#: Upper bounds shared by client and server; the server enforces them.
MAX_ITEMS_PER_REQUEST = 256
MAX_PIXELS_PER_IMAGE = 2048 * 2048


class ImagePayload(BaseModel):
    """An image as lossless bytes, so JPEG-based rewards see the exact pixels."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["png"] = Field("png", description="Encoding of `data`; only PNG for now.")
    data: str = Field(..., description="Base64 (standard alphabet) of the encoded image bytes.")


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., max_length=256, description="Caller-chosen id, echoed in details.")
    prompt: str = Field("", max_length=4096, description="The prompt the image was made from.")
    image: ImagePayload
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scorer: str = Field(..., description="Name of a scorer listed by GET /v1/scorers.")
    items: list[ScoreItem] = Field(..., min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class ScoreResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scorer: str
    version: str = Field(..., description="Scorer version; changes when its weights change.")
    scores: list[float] = Field(..., description="One score per item, in request order.")
    details: list[dict[str, Any]] | None = None


class ScorerInfo(BaseModel):
    name: str
    version: str
    description: str = ""
    kind: Literal["sync", "job"] = "sync"


class ScorerList(BaseModel):
    scorers: list[ScorerInfo]


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None


class Health(BaseModel):
    status: Literal["ok", "starting", "unavailable"]
    scorers: list[str] = Field(default_factory=list)


# -- jobs: the same request for slow scorers (human ratings), long-polled -------------

JobState = Literal["pending", "done", "expired"]


class JobAccepted(BaseModel):
    """The 202 answer to POST /v1/jobs: where and until when to poll."""

    job_id: str
    status: JobState = "pending"
    deadline: float = Field(
        ..., description="Unix time (seconds) after which unrated items stay unrated."
    )
    expires_in_s: float = Field(
        ..., description="Seconds from now to the deadline, immune to clock skew."
    )


class JobStatus(BaseModel):
    """GET /v1/jobs/{id}: per-item scores, null until an item has enough ratings."""

    job_id: str
    scorer: str
    version: str
    status: JobState = Field(
        ...,
        description="pending: still collecting; done: every ratable item has its ratings; "
        "expired: the deadline passed (or the job was cancelled) first.",
    )
    scores: list[float | None] = Field(
        ..., description="One entry per item in request order; null without enough ratings."
    )
    num_ratings: list[int] = Field(..., description="Ratings (or comparisons) each item has.")
    wins: list[int] | None = Field(
        None,
        description="Pair mode only: the comparisons each item won, of its num_ratings. The "
        "trainer's pair_score = 'win_rate' learns from these directly.",
    )
    ratings_per_item: int = Field(..., description="Ratings an item needs for a score (k).")
    deadline: float = Field(..., description="Unix time (seconds) of the job's deadline.")
