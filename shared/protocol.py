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
