"""`reward_head` through the real app: 503 before the first fit, hot reload without restart,
and the response's version being the one that scored the batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from reward_server.app import create_app
from reward_server.batching import DynamicBatcher
from reward_server.clip_embedding import ClipEmbedder
from reward_server.fitting.options import FitOptions
from reward_server.fitting.pipeline import fit_reward_head
from reward_server.scorers.base import Scorer, ScorerNotReady
from reward_server.settings import ServerSettings
from reward_server.storage import RatingStore
from shared.images import encode_png
from shared.protocol import Problem, ScoreResponse, ScorerList
from shared.shapes import draw
from tests.helpers.shape_ratings import rate_shapes
from tests.helpers.tiny_clip import write_tiny_clip

NOT_READY = "urn:ddpo:problem:not-ready"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RatingStore]]:
    """Two rating databases: raters who like red, and raters who like blue."""
    root = tmp_path_factory.mktemp("ratings")
    out = {}
    for colour, seed in (("red", 0), ("blue", 1)):
        out[colour] = RatingStore(f"sqlite:///{root / colour}.db")
        rate_shapes(out[colour], 100, prefers=colour, seed=seed)
    yield out
    for store in out.values():
        store.close()


def _settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(
        scorers=["reward_head"], reward_head_dir=tmp_path / "heads", device="cpu", models_dir=None
    )


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.05)


def _item(i: int, colour: str) -> dict[str, Any]:
    pixels = draw("square", colour, "white", np.random.default_rng(i))
    return {"id": f"{colour}-{i}", "prompt": "", "image": encode_png(pixels).model_dump()}


def _score(client: TestClient) -> ScoreResponse:
    items = [_item(i, c) for i in range(3) for c in ("red", "blue")]
    response = client.post("/v1/score", json={"scorer": "reward_head", "items": items})
    assert response.status_code == 200, response.text
    return ScoreResponse.model_validate(response.json())


def _red_minus_blue(scored: ScoreResponse) -> float:
    by_colour: dict[str, list[float]] = {"red": [], "blue": []}
    for detail, value in zip(scored.details or [], scored.scores, strict=True):
        by_colour[detail["id"].split("-")[0]].append(value)
    return float(np.mean(by_colour["red"]) - np.mean(by_colour["blue"]))


def test_hot_reload_through_the_app(
    tmp_path: Path, clip_dir: Path, stores: dict[str, RatingStore]
) -> None:
    settings = _settings(tmp_path)
    heads = settings.resolved_reward_head_dir()
    embedder = ClipEmbedder.load(str(clip_dir))
    with TestClient(create_app(settings)) as client:
        _wait_ready(client)
        scorer = client.app.state.runtime.scorers["reward_head"]  # type: ignore[attr-defined]
        scorer.check_interval_s = 0.0  # look at LATEST on every batch (default: once a second)

        # Before any fit: the server runs, and scoring says what to do.
        response = client.post(
            "/v1/score", json={"scorer": "reward_head", "items": [_item(0, "red")]}
        )
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = Problem.model_validate(response.json())
        assert problem.type == NOT_READY and "ddpo fit-reward" in problem.detail
        listed = ScorerList.model_validate(client.get("/v1/scorers").json())
        assert [(s.name, s.version) for s in listed.scorers] == [("reward_head", "none")]

        head_a = fit_reward_head(stores["red"], embedder, heads, FitOptions(seed=0))
        scored = _score(client)
        assert scored.version == head_a.version
        assert all(d["head_version"] == head_a.version for d in scored.details or [])
        assert _red_minus_blue(scored) > 0.5

        head_b = fit_reward_head(stores["blue"], embedder, heads, FitOptions(seed=0))
        assert head_b.version != head_a.version
        scored = _score(client)  # same server, no restart
        assert scored.version == head_b.version
        assert _red_minus_blue(scored) < -0.5
        listed = ScorerList.model_validate(client.get("/v1/scorers").json())
        assert listed.scorers[0].version == head_b.version
        assert head_b.version in listed.scorers[0].description


def test_reward_head_is_opt_in(tmp_path: Path) -> None:
    from reward_server.scorers.registry import build_scorers, default_registry

    assert "reward_head" in default_registry().names()
    assert "reward_head" not in default_registry().default_names()
    built = build_scorers(_settings(tmp_path), ["reward_head"])
    assert built["reward_head"].kind == "sync"


# -- the version a response reports ---------------------------------------------------


class _Swapping(Scorer):
    """Changes version after every batch, as a reload between batches would."""

    name = "swapping"
    version = "v0"

    def __init__(self) -> None:
        self.max_batch_size = 1
        self.calls = 0

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        self.calls += 1
        self.version = f"v{self.calls}"  # the version of the weights that scored this batch
        return [float(self.calls)] * len(images), None


def test_version_is_the_one_that_scored_the_batch() -> None:
    async def main() -> list[Any]:
        batcher = DynamicBatcher(_Swapping(), max_wait_s=0.0)
        try:
            one = await batcher.submit_versioned([Image.new("RGB", (2, 2))], [""])
            two = await batcher.submit_versioned([Image.new("RGB", (2, 2))] * 2, ["", ""])
            plain = await batcher.submit([Image.new("RGB", (2, 2))], [""])
            return [one, two, plain]
        finally:
            await batcher.aclose()

    one, two, plain = asyncio.run(main())
    assert (one.scores, one.version) == ([1.0], "v1")
    # Split over two batches with a swap between them: both versions are named.
    assert (two.scores, two.version) == ([2.0, 3.0], "v2, v3")
    assert plain == ([4.0], None)


class _NotReady(Scorer):
    name = "later"

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        raise ScorerNotReady("nothing to score with yet: do the thing")


def test_scorer_not_ready_is_a_503_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with TestClient(create_app(ServerSettings(), {"later": _NotReady()})) as client:
        response = client.post("/v1/score", json={"scorer": "later", "items": [_item(0, "red")]})
    assert response.status_code == 503
    problem = Problem.model_validate(response.json())
    assert problem.type == NOT_READY and problem.detail == "nothing to score with yet: do the thing"
    assert "Traceback" not in caplog.text
