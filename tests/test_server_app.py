"""The HTTP API: routes, auth, and a problem+json answer for every kind of bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from reward_server.app import create_app
from reward_server.scorers.base import Scorer, ScorerUnavailable
from reward_server.scorers.jpeg import JpegCompressibility
from reward_server.scorers.registry import ScorerRegistry
from reward_server.settings import ServerSettings
from shared.images import encode_png
from shared.protocol import Health, Problem, ScoreResponse, ScorerList
from tests.helpers.recording_scorer import RecordingScorer

KEY = "test-key"


def _png(color: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (8, 8)) -> str:
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[:] = color
    return encode_png(arr).data


def _body(scorer: str = "recording", n: int = 2, **item: Any) -> dict[str, Any]:
    items = []
    for i in range(n):
        entry = {"id": f"img-{i}", "prompt": f"p{i}", "image": {"format": "png", "data": _png()}}
        entry.update(item)
        items.append(entry)
    return {"scorer": scorer, "items": items}


def _scorers() -> dict[str, Scorer]:
    return {"recording": RecordingScorer(), "jpeg_compressibility": JpegCompressibility()}


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = ServerSettings(max_items=4, max_body_bytes=200_000, max_pixels=64 * 64)
    with TestClient(create_app(settings, _scorers())) as c:
        yield c


@pytest.fixture
def authed() -> Iterator[TestClient]:
    with TestClient(create_app(ServerSettings(api_keys=[KEY]), _scorers())) as c:
        yield c


def problem(response: httpx.Response, status: int, *fragments: str) -> Problem:
    """Assert a problem+json response of this status whose detail holds every fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = Problem.model_validate(response.json())
    assert body.status == status
    for fragment in fragments:
        assert fragment in body.detail, body.detail
    return body


# -- happy paths --------------------------------------------------------------


def test_health_ready_and_docs(client: TestClient) -> None:
    health = Health.model_validate(client.get("/healthz").json())
    assert health.status == "ok" and "recording" in health.scorers
    assert client.get("/readyz").status_code == 200
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "ScoreRequest" in spec["components"]["schemas"]
    assert "Problem" in spec["components"]["schemas"]
    assert "/v1/score" in spec["paths"]


def test_list_scorers(client: TestClient) -> None:
    listing = ScorerList.model_validate(client.get("/v1/scorers").json())
    assert [s.name for s in listing.scorers] == ["recording", "jpeg_compressibility"]
    assert listing.scorers[0].version == "test"


def test_score(client: TestClient) -> None:
    body = _body(n=3)
    body["items"][1]["image"]["data"] = _png((51, 0, 0))
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    resp = ScoreResponse.model_validate(r.json())
    assert resp.scorer == "recording" and resp.version == "test"
    assert resp.scores == pytest.approx([1.0, 0.2, 1.0])
    assert resp.details == [
        {"id": "img-0", "prompt": "p0"},
        {"id": "img-1", "prompt": "p1"},
        {"id": "img-2", "prompt": "p2"},
    ]


def test_score_without_details_still_echoes_ids(client: TestClient) -> None:
    r = client.post("/v1/score", json=_body("jpeg_compressibility", n=1))
    resp = ScoreResponse.model_validate(r.json())
    assert resp.scores[0] < 0 and resp.details == [{"id": "img-0"}]


def test_concurrent_http_requests_share_a_batch() -> None:
    scorer = RecordingScorer(max_batch_size=8)  # full once all four requests are in
    app = create_app(ServerSettings(batch_max_wait_ms=1000), {"recording": scorer})

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as http,
        ):
            responses = await asyncio.gather(
                *(http.post("/v1/score", json=_body(n=2)) for _ in range(4))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 4
    assert sum(scorer.batch_sizes) == 8 and len(scorer.batch_sizes) < 4


# -- auth -----------------------------------------------------------------------


def test_auth(authed: TestClient) -> None:
    r = authed.get("/v1/scorers")
    problem(r, 401, "missing API key")
    assert r.headers["www-authenticate"].startswith("Bearer")
    problem(authed.post("/v1/score", json=_body()), 401)
    problem(authed.get("/v1/scorers", headers={"Authorization": "Bearer nope"}), 401, "invalid")
    problem(authed.get("/v1/scorers", headers={"Authorization": f"Basic {KEY}"}), 401)
    ok = {"Authorization": f"Bearer {KEY}"}
    assert authed.get("/v1/scorers", headers=ok).status_code == 200
    assert authed.post("/v1/score", json=_body(), headers=ok).status_code == 200
    # Probes and docs stay open.
    assert authed.get("/healthz").status_code == 200
    assert authed.get("/readyz").status_code == 200
    assert authed.get("/docs").status_code == 200


# -- bad input: 4xx problem+json, never 500 -----------------------------------------


def test_invalid_json(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    problem(client.post("/v1/score", content=b"{not json", headers=headers), 400, "not valid JSON")
    problem(client.post("/v1/score", content=b"", headers=headers), 400, "empty")
    problem(client.post("/v1/score", content=b"\xff\xfe", headers=headers), 400, "JSON")


def test_schema_errors_name_the_field(client: TestClient) -> None:
    body = _body()
    del body["items"][1]["image"]["data"]
    problem(client.post("/v1/score", json=body), 422, "items[1].image.data", "Field required")
    problem(client.post("/v1/score", json={"items": []}), 422, "scorer")
    problem(client.post("/v1/score", json=[1, 2]), 422, "body")
    extra = _body()
    extra["items"][0]["colour"] = "red"
    problem(client.post("/v1/score", json=extra), 422, "items[0].colour")
    jpeg = _body()
    jpeg["items"][0]["image"]["format"] = "jpeg"
    problem(client.post("/v1/score", json=jpeg), 422, "items[0].image.format")


def test_wrong_content_type(client: TestClient) -> None:
    r = client.post(
        "/v1/score", content=json.dumps(_body()), headers={"content-type": "text/plain"}
    )
    problem(r, 415, "application/json")


def test_bad_base64(client: TestClient) -> None:
    r = client.post("/v1/score", json=_body(n=2, image={"format": "png", "data": "!!not base64"}))
    problem(r, 422, "items[0].image", "base64")


def test_not_an_image(client: TestClient) -> None:
    data = base64.b64encode(b"hello, this is text").decode()
    r = client.post("/v1/score", json=_body(n=1, image={"format": "png", "data": data}))
    problem(r, 422, "items[0].image", "not a readable image")


def test_jpeg_bytes_declared_png(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    data = base64.b64encode(buf.getvalue()).decode()
    r = client.post("/v1/score", json=_body(n=1, image={"format": "png", "data": data}))
    problem(r, 422, "items[0].image", "JPEG")


def test_truncated_image(client: TestClient) -> None:
    raw = base64.b64decode(_png(size=(32, 32)))
    body = _body(n=2)
    body["items"][1]["image"]["data"] = base64.b64encode(raw[: len(raw) // 2]).decode()
    problem(client.post("/v1/score", json=body), 422, "items[1].image")


def test_too_many_pixels(client: TestClient) -> None:
    body = _body(n=1)
    body["items"][0]["image"]["data"] = _png(size=(65, 64))  # limit is 64x64 here
    problem(client.post("/v1/score", json=body), 422, "items[0].image", "4160", "4096")


def test_too_many_pixels_per_request() -> None:
    settings = ServerSettings(max_request_pixels=3 * 8 * 8)
    with TestClient(create_app(settings, _scorers())) as c:
        assert c.post("/v1/score", json=_body(n=3)).status_code == 200
        problem(c.post("/v1/score", json=_body(n=4)), 422, "items[3].image", "192 pixels")


def test_too_many_items(client: TestClient) -> None:
    small = {"id": "x", "image": {"data": "AAAA"}}
    problem(client.post("/v1/score", json=_body(n=5)), 422, "items", "at most 4")
    body = {"scorer": "recording", "items": [small] * 257}  # beyond the protocol's cap
    problem(client.post("/v1/score", json=body), 422, "items", "at most 4")


def test_body_too_large_by_content_length(client: TestClient) -> None:
    r = client.post(
        "/v1/score", content=b"x" * 200_001, headers={"content-type": "application/json"}
    )
    problem(r, 413, "200001 bytes", "limit of 200000")


def test_body_too_large_streamed(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            yield b" " * 10_000

    r = client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    problem(r, 413, "exceeds the limit of 200000 bytes")


def test_unknown_scorer_lists_available(client: TestClient) -> None:
    r = client.post("/v1/score", json=_body("nope"))
    p = problem(r, 422, "'nope'", "recording, jpeg_compressibility")
    assert p.type.endswith("unknown-scorer")


def test_unknown_route_and_method(client: TestClient) -> None:
    problem(client.get("/v2/score"), 404, "/v2/score")
    problem(client.get("/v1/score"), 405)


# -- server-side failures and readiness --------------------------------------------


class _Exploding(Scorer):
    name = "exploding"

    def score(self, images: list[Image.Image], prompts: list[str]) -> tuple[list[float], None]:
        raise RuntimeError("GPU on fire")


def test_scorer_failure_is_a_500_problem() -> None:
    app = create_app(ServerSettings(), {"exploding": _Exploding()})
    with TestClient(app) as c:
        r = c.post("/v1/score", json=_body("exploding", n=1))
        problem(r, 500, "GPU on fire")


def test_ready_only_after_background_load() -> None:
    release = threading.Event()

    def slow_factory(settings: ServerSettings) -> Scorer:
        release.wait(10)
        return RecordingScorer()

    registry = ScorerRegistry()
    registry.register("recording", slow_factory)
    app = create_app(ServerSettings(), None, registry)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["status"] == "starting"
        problem(c.get("/readyz"), 503, "loading")
        r = c.post("/v1/score", json=_body())
        problem(r, 503, "loading")
        assert r.headers["retry-after"]
        release.set()
        for _ in range(200):
            if c.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/score", json=_body()).status_code == 200


def test_not_ready_when_nothing_loads() -> None:
    def unavailable(settings: ServerSettings) -> Scorer:
        raise ScorerUnavailable("no weights")

    registry = ScorerRegistry()
    registry.register("x", unavailable)
    with TestClient(create_app(ServerSettings(), None, registry)) as c:
        for _ in range(200):
            if c.get("/healthz").json()["status"] != "starting":
                break
            threading.Event().wait(0.02)
        assert c.get("/healthz").json()["status"] == "unavailable"
        problem(c.get("/readyz"), 503, "no scorer")
