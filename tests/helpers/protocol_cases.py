"""Requests whose answers any deployment of the reward server must give alike.

Run against the plain app (tests/test_protocol_cases.py) and against Ray Serve
(tests/test_ray_serve.py): the same requests, the same expected statuses and
problem types, so auth, limits and bad input behave the same on both.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from shared.images import encode_png

API_KEY = "cases-key-5d1e"
MAX_BODY = 200_000
MAX_ITEMS = 4
PROBLEM = "application/problem+json"


def case_settings(clip_dir: Path) -> dict[str, Any]:
    """ServerSettings fields both deployments get: a key, small limits, a tiny CLIP scorer."""
    return {
        "api_keys": [API_KEY],
        "max_body_bytes": MAX_BODY,
        "max_items": MAX_ITEMS,
        "scorers": ["jpeg_compressibility", "pickscore"],
        "pickscore_model": str(clip_dir),
        "pickscore_processor": str(clip_dir),
        "device": "cpu",
        "models_dir": None,
    }


def items(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"i{k}",
            "prompt": ["a red cube", "a blue sphere", ""][k % 3],
            "image": encode_png(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).model_dump(),
        }
        for k in range(n)
    ]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    status: int
    problem: str | None = None  # the problem type's last part, for error answers
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, client: httpx.Client) -> httpx.Response:
        return client.request(self.method, self.path, content=self.body, headers=self.headers)


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
BAD_IMAGE = {"format": "png", "data": base64.b64encode(b"not a png").decode()}

CASES = [
    Case("healthz", "GET", "/healthz", 200),
    Case("readyz", "GET", "/readyz", 200),
    Case("scorers without key", "GET", "/v1/scorers", 401, "unauthorized"),
    Case(
        "scorers wrong key",
        "GET",
        "/v1/scorers",
        401,
        "unauthorized",
        headers={"Authorization": "Bearer nope"},
    ),
    Case("scorers", "GET", "/v1/scorers", 200, headers=AUTH),
    Case(
        "score without key",
        "POST",
        "/v1/score",
        401,
        "unauthorized",
        _json({"scorer": "pickscore", "items": items(1)}),
    ),
    Case("score not json", "POST", "/v1/score", 400, "invalid-json", b"{oops", AUTH),
    Case("score empty", "POST", "/v1/score", 400, "invalid-json", b"", AUTH),
    Case(
        "score wrong media type",
        "POST",
        "/v1/score",
        415,
        "unsupported-media-type",
        b"x",
        {**AUTH, "Content-Type": "text/plain"},
    ),
    Case(
        "score unknown scorer",
        "POST",
        "/v1/score",
        422,
        "unknown-scorer",
        _json({"scorer": "nope", "items": items(1)}),
        AUTH,
    ),
    Case(
        "score too many items",
        "POST",
        "/v1/score",
        422,
        "too-many-items",
        _json({"scorer": "pickscore", "items": items(MAX_ITEMS + 1)}),
        AUTH,
    ),
    Case(
        "score bad image",
        "POST",
        "/v1/score",
        422,
        "invalid-image",
        _json({"scorer": "pickscore", "items": [{"id": "x", "image": BAD_IMAGE}]}),
        AUTH,
    ),
    Case(
        "score body too large",
        "POST",
        "/v1/score",
        413,
        "body-too-large",
        _json({"scorer": "pickscore", "items": items(1), "pad": "x" * MAX_BODY}),
        AUTH,
    ),
    Case("unknown path", "GET", "/v1/nothing", 404, "about:blank"),
    Case(
        "score jpeg",
        "POST",
        "/v1/score",
        200,
        body=_json({"scorer": "jpeg_compressibility", "items": items(3)}),
        headers=AUTH,
    ),
    Case(
        "score pickscore",
        "POST",
        "/v1/score",
        200,
        body=_json({"scorer": "pickscore", "items": items(3)}),
        headers=AUTH,
    ),
]


def check(case: Case, response: httpx.Response) -> dict[str, Any]:
    """The case's expectations; returns the answer's JSON for comparisons."""
    assert response.status_code == case.status, f"{case.name}: {response.text[:300]}"
    body = response.json()
    if case.problem is not None:
        assert response.headers["content-type"].startswith(PROBLEM), case.name
        assert body["type"].split(":problem:")[-1] == case.problem, f"{case.name}: {body}"
        assert body["status"] == case.status
    return body
