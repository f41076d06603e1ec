"""RewardClient against a stub reward server on loopback, plus httpx.MockTransport unit tests.

The stub speaks the v1 protocol; every test gets its own URL prefix (a token),
so per-test state such as the flaky scorer's failure count stays separate.
The scorer name picks the behaviour: mean = mean pixel / 255, dark = 1 - mean,
slow = mean after 0.5 s, flaky3 = 503 three times then mean, bad422 = always a
422 problem+json, auth = mean but only with `Bearer s3cret`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse

from shared.images import decode_image
from shared.protocol import (
    Problem,
    ScoreRequest,
    ScoreResponse,
    ScorerInfo,
    ScorerList,
)
from trainer.config import RewardEndpoint
from trainer.reward_client import (
    RewardClient,
    RewardError,
    RewardServerUnavailable,
    gather_results,
)

SCORERS = ["mean", "dark", "slow", "flaky3", "bad422", "auth"]
SLOW_S = 0.5


@dataclass
class StubLog:
    """What the stub saw, per test token."""

    requests: dict[str, list[list[str]]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def problem(status: int, detail: str) -> JSONResponse:
    body = Problem(title="error", status=status, detail=detail).model_dump()
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def make_stub_app(log: StubLog) -> FastAPI:
    app = FastAPI()

    @app.get("/{token}/readyz")
    async def readyz(token: str) -> JSONResponse:
        if token == "notready":
            return JSONResponse({"status": "starting", "scorers": []}, status_code=503)
        return JSONResponse({"status": "ok", "scorers": SCORERS})

    @app.get("/{token}/v1/scorers")
    async def scorers(token: str) -> dict:
        return ScorerList(scorers=[ScorerInfo(name=n, version="1") for n in SCORERS]).model_dump()

    @app.post("/{token}/v1/score", response_model=None)
    async def score(
        token: str, req: ScoreRequest, authorization: str | None = Header(None)
    ) -> dict | JSONResponse:
        log.requests[token].append([item.id for item in req.items])
        if req.scorer == "flaky3" and log.failures[token] < 3:
            log.failures[token] += 1
            return problem(503, "warming up")
        if req.scorer == "bad422":
            return problem(422, "image 0 is too small for this scorer")
        if req.scorer == "auth" and authorization != "Bearer s3cret":
            return problem(401, "missing or wrong API key")
        if req.scorer == "slow":
            await asyncio.sleep(SLOW_S)
        scores = [float(np.asarray(decode_image(it.image)).mean() / 255) for it in req.items]
        if req.scorer == "dark":
            scores = [1.0 - s for s in scores]
        return ScoreResponse(scorer=req.scorer, version="1", scores=scores).model_dump()

    return app


@pytest.fixture(scope="module")
def stub_server() -> Iterator[tuple[str, StubLog]]:
    """Uvicorn on a free loopback port in a background thread, shared by this module."""
    log = StubLog()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_stub_app(log), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "stub server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", log
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture
def stub(stub_server: tuple[str, StubLog]) -> tuple[Callable[[], str], StubLog]:
    """A factory of fresh URL prefixes on the shared stub, and the log to inspect."""
    root, log = stub_server
    return (lambda: f"{root}/{uuid.uuid4().hex}"), log


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def solid_images(values: list[int], size: int = 8) -> np.ndarray:
    """One flat image per value, so the 'mean' scorer returns value / 255."""
    return np.stack([np.full((size, size, 3), v, dtype=np.uint8) for v in values])


def endpoint(url: str, scorer: str, **kw: object) -> RewardEndpoint:
    return RewardEndpoint(url=url, scorer=scorer, **kw)


def fast_client(endpoints: list[RewardEndpoint], **kw: object) -> RewardClient:
    """Tiny backoff so retry tests take milliseconds."""
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.02)
    return RewardClient(endpoints, **kw)


# -- against the stub server ---------------------------------------------------------


def test_two_endpoints_combine_by_weight(stub) -> None:
    new_url, _ = stub
    eps = [endpoint(new_url(), "mean", weight=2.0), endpoint(new_url(), "dark", weight=-1.0)]
    images = solid_images([0, 51, 255])
    with fast_client(eps) as client:
        fut = client.submit(images, ["a", "b", "c"])
        images[:] = 0  # the client copied the batch, so reusing the buffer is safe
        res = fut.result()
    m = np.array([0.0, 0.2, 1.0])
    assert res.rewards.dtype == np.float32 and res.rewards.shape == (3,)
    np.testing.assert_allclose(res.rewards, 2 * m - (1 - m), atol=1e-6)
    assert set(res.per_scorer) == {"mean", "dark"}
    np.testing.assert_allclose(res.per_scorer["dark"], 1 - m, atol=1e-6)


def test_repeated_scorer_names_are_keyed_by_url(stub) -> None:
    new_url, _ = stub
    u1, u2 = new_url(), new_url()
    with fast_client([endpoint(u1, "mean"), endpoint(u2, "mean", weight=0.5)]) as client:
        res = client.submit(solid_images([255]), ["p"]).result()
    assert set(res.per_scorer) == {f"mean@{u1}", f"mean@{u2}"}
    assert res.rewards.tolist() == pytest.approx([1.5])


def test_chunking_keeps_order(stub) -> None:
    new_url, log = stub
    url = new_url()
    values = [(7 * i) % 256 for i in range(300)]
    ids = [f"s{i}" for i in range(300)]
    with fast_client([endpoint(url, "mean")]) as client:
        res = client.submit(solid_images(values, size=2), ["p"] * 300, ids=ids).result()
    np.testing.assert_allclose(res.rewards, np.array(values) / 255, atol=1e-6)
    sent = log.requests[token_of(url)]
    assert sorted(len(r) for r in sent) == [44, 256]  # MAX_ITEMS_PER_REQUEST = 256
    assert sorted(sent, key=len, reverse=True)[0] + sorted(sent, key=len)[0] == ids

    url = new_url()
    with fast_client([endpoint(url, "mean")], max_items_per_request=7) as client:
        res = client.submit(solid_images(values[:20]), ["p"] * 20).result()
    np.testing.assert_allclose(res.rewards, np.array(values[:20]) / 255, atol=1e-6)
    assert sorted(len(r) for r in log.requests[token_of(url)]) == [6, 7, 7]


def test_retries_after_503_then_succeeds(stub) -> None:
    new_url, log = stub
    url = new_url()
    with fast_client([endpoint(url, "flaky3", max_retries=3)]) as client:
        res = client.submit(solid_images([255]), ["p"]).result()
    assert res.rewards.tolist() == [1.0]
    assert len(log.requests[token_of(url)]) == 4

    url = new_url()
    with fast_client([endpoint(url, "flaky3", max_retries=2)]) as client:
        fut = client.submit(solid_images([255]), ["p"])
        with pytest.raises(RewardError, match="failed after 3 attempts.*503.*warming up"):
            fut.result()


def test_4xx_fails_at_once_with_the_problem_detail(stub) -> None:
    new_url, log = stub
    url = new_url()
    with fast_client([endpoint(url, "bad422", max_retries=4)]) as client:
        fut = client.submit(solid_images([1]), ["p"])
        with pytest.raises(RewardError) as err:
            fut.result()
    msg = str(err.value)
    assert url in msg and "'bad422'" in msg and "422" in msg
    assert "image 0 is too small for this scorer" in msg
    assert len(log.requests[token_of(url)]) == 1


def test_api_key_is_sent_as_bearer(stub) -> None:
    new_url, _ = stub
    url = new_url()
    with fast_client([endpoint(url, "auth", api_key="s3cret")]) as client:
        assert client.submit(solid_images([255]), ["p"]).result().rewards.tolist() == [1.0]
    with (
        fast_client([endpoint(url, "auth")]) as client,
        pytest.raises(RewardError, match="401.*missing or wrong API key"),
    ):
        client.submit(solid_images([255]), ["p"]).result()


def test_check_ready(stub) -> None:
    new_url, _ = stub
    url = new_url()
    with fast_client([endpoint(url, "mean"), endpoint(url, "dark")]) as client:
        client.check_ready(timeout_s=5)

    with (
        fast_client([endpoint(url, "mean"), endpoint(url, "nope")]) as client,
        pytest.raises(RewardServerUnavailable) as err,
    ):
        client.check_ready(timeout_s=5)
    assert url in str(err.value) and "'nope'" in str(err.value)
    assert "available: mean, dark" in str(err.value)

    notready = url.rsplit("/", 1)[0] + "/notready"
    with (
        fast_client([endpoint(notready, "mean")]) as client,
        pytest.raises(RewardServerUnavailable, match="not ready: HTTP 503"),
    ):
        client.check_ready(timeout_s=5)


def test_check_ready_fails_fast_on_a_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with fast_client([endpoint(url, "mean")]) as client:
        start = time.monotonic()
        with pytest.raises(RewardServerUnavailable) as err:
            client.check_ready(timeout_s=5)
        assert time.monotonic() - start < 2
    assert url in str(err.value) and "unreachable" in str(err.value)


def test_submit_returns_at_once_and_batches_overlap(stub) -> None:
    new_url, _ = stub
    with fast_client([endpoint(new_url(), "slow")]) as client:
        start = time.monotonic()
        futures = []
        for value in (51, 102):
            t0 = time.monotonic()
            futures.append(client.submit(solid_images([value] * 4), ["p"] * 4))
            assert time.monotonic() - t0 < 0.1
        res, waited = gather_results(futures)
        total = time.monotonic() - start
    assert total < 0.9, f"two {SLOW_S}s batches took {total:.2f}s: not overlapped"
    assert 0.3 < waited <= total and res.wait_s == waited
    np.testing.assert_allclose(res.rewards, [0.2] * 4 + [0.4] * 4, atol=1e-6)
    assert res.per_scorer["slow"].shape == (8,)


def test_deadline_raises(stub) -> None:
    new_url, _ = stub
    url = new_url()
    with fast_client([endpoint(url, "slow")], deadline_s=0.2) as client:
        start = time.monotonic()
        fut = client.submit(solid_images([1]), ["p"])
        with pytest.raises(RewardError, match="0.2s deadline") as err:
            fut.result()
        assert time.monotonic() - start < SLOW_S - 0.05
    assert url in str(err.value)


def test_per_request_timeout_is_retried_then_fails(stub) -> None:
    new_url, log = stub
    url = new_url()
    with (
        fast_client([endpoint(url, "slow", timeout_s=0.1, max_retries=1)]) as client,
        pytest.raises(RewardError, match="failed after 2 attempts: ReadTimeout"),
    ):
        client.submit(solid_images([1]), ["p"]).result()
    assert len(log.requests[token_of(url)]) == 2


def test_result_timeout_leaves_the_batch_running(stub) -> None:
    new_url, _ = stub
    with fast_client([endpoint(new_url(), "slow")]) as client:
        fut = client.submit(solid_images([255]), ["p"])
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.05)
        assert not fut.done()
        assert fut.result(timeout=5).rewards.tolist() == [1.0]


def test_close_cancels_pending_and_leaves_no_threads(stub) -> None:
    new_url, _ = stub
    before = set(threading.enumerate())
    client = fast_client([endpoint(new_url(), "slow")])
    fut = client.submit(solid_images([1] * 3), ["p"] * 3)
    time.sleep(0.1)  # encoding done, request in flight
    client.close()
    client.close()  # idempotent
    with pytest.raises(RewardError, match="cancelled"):
        fut.result(timeout=1)
    with pytest.raises(RewardError, match="closed"):
        client.submit(solid_images([1]), ["p"])
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leaked == []


# -- httpx.MockTransport unit tests ----------------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> RewardClient:
    ep = endpoint("http://reward.test", "mock", max_retries=kw.pop("max_retries", 0))
    return fast_client([ep], transport=httpx.MockTransport(handler), **kw)


def ok(scores: list[float]) -> httpx.Response:
    return httpx.Response(200, json={"scorer": "mock", "version": "1", "scores": scores})


def test_request_body_headers_and_connect_retry() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return ok([0.5, 0.25])

    ep = endpoint("http://reward.test/base/", "mock", api_key="k", max_retries=1)
    with fast_client([ep], transport=httpx.MockTransport(handler)) as client:
        meta = [{"seed": 1}, {"seed": 2}]
        res = client.submit(solid_images([1, 2]), ["x", "y"], ids=["i1", "i2"], metadata=meta)
        assert res.result().rewards.tolist() == [0.5, 0.25]
    assert len(seen) == 2
    req = seen[-1]
    assert str(req.url) == "http://reward.test/base/v1/score"
    assert req.headers["authorization"] == "Bearer k"
    body = ScoreRequest.model_validate_json(req.content)
    assert body.scorer == "mock"
    assert [(i.id, i.prompt, i.metadata) for i in body.items] == [
        ("i1", "x", {"seed": 1}),
        ("i2", "y", {"seed": 2}),
    ]
    assert np.asarray(decode_image(body.items[1].image)).max() == 2


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (ok([1.0]), "returned 1 scores for 2 items"),
        (httpx.Response(200, json={"scores": [1, 2]}), "invalid ScoreResponse"),
        (httpx.Response(400, text="plain text"), "HTTP 400: plain text"),
    ],
)
def test_bad_responses_raise(response: httpx.Response, message: str) -> None:
    with (
        mock_client(lambda request: response, max_retries=3) as client,
        pytest.raises(RewardError, match=message),
    ):
        client.submit(solid_images([1, 2]), ["a", "b"]).result()


def test_nan_and_inf_scores_are_rejected() -> None:
    scores = [float("nan"), 1.0, float("inf")]
    body = json.dumps({"scorer": "mock", "version": "1", "scores": scores}).encode()
    with (
        mock_client(lambda request: httpx.Response(200, content=body)) as client,
        pytest.raises(RewardError, match=r"non-finite scores at positions \[0, 2\]"),
    ):
        client.submit(solid_images([1, 2, 3]), ["a", "b", "c"]).result()


def test_5xx_without_json_is_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(502, text="bad gateway") if len(calls) < 3 else ok([0.0])

    with mock_client(handler, max_retries=2) as client:
        assert client.submit(solid_images([1]), ["a"]).result().rewards.tolist() == [0.0]
    assert len(calls) == 3


def test_submit_validates_its_arguments() -> None:
    with mock_client(lambda request: ok([0.0])) as client:
        with pytest.raises(ValueError, match="uint8"):
            client.submit(np.zeros((1, 4, 4, 3), dtype=np.float32), ["a"])
        with pytest.raises(ValueError, match="1 prompts for 2 images"):
            client.submit(solid_images([1, 2]), ["a"])
        with pytest.raises(RewardError, match="cannot encode"):
            client.submit(solid_images([1]), ["a"], ids=["x" * 300]).result()
    with pytest.raises(ValueError, match="at least one"):
        RewardClient([])
