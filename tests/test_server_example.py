"""examples/custom_reward_server.py speaks the protocol the trainer expects."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shared.images import encode_png
from shared.protocol import Problem, ScoreRequest, ScoreResponse, ScorerList

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_reward_server.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("custom_reward_server", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _request(*levels: int, scorer: str = "brightness") -> dict:
    items = [
        {"id": f"i{v}", "prompt": "x", "image": encode_png(np.full((8, 8, 3), v, np.uint8))}
        for v in levels
    ]
    return ScoreRequest(scorer=scorer, items=items).model_dump()


def test_example_scores_brightness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REWARD_API_KEY", raising=False)
    client = TestClient(_load().app)
    listing = ScorerList.model_validate(client.get("/v1/scorers").json())
    assert listing.scorers[0].name == "brightness"
    r = client.post("/v1/score", json=_request(0, 255, 51))
    resp = ScoreResponse.model_validate(r.json())
    assert resp.scores == pytest.approx([0.0, 1.0, 0.2])
    bad = client.post("/v1/score", json=_request(1, scorer="nope"))
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert "available: brightness" in Problem.model_validate(bad.json()).detail


def test_example_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARD_API_KEY", "k")
    client = TestClient(_load().app)
    assert client.post("/v1/score", json=_request(9)).status_code == 401
    ok = client.post("/v1/score", json=_request(9), headers={"Authorization": "Bearer k"})
    assert ok.status_code == 200
