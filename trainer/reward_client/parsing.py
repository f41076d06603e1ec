"""Reading reward-server answers: problem+json details, Retry-After, score lists."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
from pydantic import ValidationError

from shared.protocol import ScoreResponse
from trainer.config import RewardEndpoint
from trainer.reward_client.endpoints import describe
from trainer.reward_client.errors import RewardError


def problem_detail(resp: httpx.Response) -> str:
    """The `detail` of a problem+json body, else the start of whatever the server sent."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)[:500]
    return json.dumps(body)[:500]


def retry_after(resp: httpx.Response) -> float | None:
    """The Retry-After header in seconds, if the server sent a number."""
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_scores(resp: httpx.Response, ep: RewardEndpoint, n: int) -> np.ndarray:
    """Check the response is a ScoreResponse with one finite score per item."""
    try:
        parsed = ScoreResponse.model_validate_json(resp.content)
    except ValidationError as exc:
        raise RewardError(f"{describe(ep)} sent an invalid ScoreResponse: {exc}") from None
    if len(parsed.scores) != n:
        raise RewardError(f"{describe(ep)} returned {len(parsed.scores)} scores for {n} items")
    scores = np.asarray(parsed.scores, dtype=np.float64)
    bad = [i for i, s in enumerate(parsed.scores) if not math.isfinite(s)]
    if bad:
        raise RewardError(
            f"{describe(ep)} returned non-finite scores at positions {bad[:10]} of the request"
        )
    return scores
