"""One submitted batch and its request bodies.

Items are PNG-encoded and serialised once per chunk, then shared by every
endpoint and retry; only the scorer name differs between score bodies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from shared.images import encode_png
from shared.protocol import ScoreItem

_ITEMS_JSON = TypeAdapter(list[ScoreItem])


@dataclass
class Batch:
    """What one submit sends; images are a private copy so the caller may reuse its buffer."""

    images: np.ndarray
    prompts: list[str]
    ids: list[str]
    metadata: list[dict[str, Any]]
    deadline: float = math.inf  # a DeadlineClock value
    counts: dict[str, int] = field(default_factory=lambda: {"rated": 0, "dropped": 0, "filled": 0})


def encode_items(batch: Batch, start: int, stop: int) -> bytes:
    """PNG-encode one chunk and serialise its items once, shared by every endpoint and retry."""
    return encode_indices(batch, range(start, stop))


def encode_indices(batch: Batch, indices: Sequence[int]) -> bytes:
    """The JSON `items` array for the batch items at `indices`."""
    items = [
        ScoreItem(
            id=batch.ids[i],
            prompt=batch.prompts[i],
            image=encode_png(batch.images[i]),
            metadata=batch.metadata[i],
        )
        for i in indices
    ]
    return _ITEMS_JSON.dump_json(items)


def score_body(scorer: str, items_json: bytes) -> bytes:
    """A ScoreRequest body around already serialised items, without parsing them again."""
    return b'{"scorer":' + json.dumps(scorer).encode() + b',"items":' + items_json + b"}"
