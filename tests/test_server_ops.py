"""Operations: /metrics after real traffic, X-Request-ID, JSON logs, draining on shutdown."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from reward_server.app import create_app
from reward_server.observability import JsonFormatter, configure_logging, request_id_var
from reward_server.serve import uvicorn_options
from reward_server.settings import ServerSettings
from shared.images import encode_png
from tests.helpers.recording_scorer import RecordingScorer


def _item(i: int) -> dict[str, Any]:
    image = encode_png(np.full((8, 8, 3), 200, dtype=np.uint8)).model_dump()
    return {"id": f"img-{i}", "prompt": "p", "image": image}


def _body(n: int = 2, scorer: str = "recording") -> dict[str, Any]:
    return {"scorer": scorer, "items": [_item(i) for i in range(n)]}


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = ServerSettings(max_body_bytes=50_000)
    with TestClient(create_app(settings, {"recording": RecordingScorer()})) as c:
        yield c


def samples(client: TestClient) -> dict[tuple[str, frozenset], float]:
    """Scrape /metrics and index every sample by (name, labels)."""
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_metrics_count_requests_batches_and_errors(client: TestClient) -> None:
    assert client.post("/v1/score", json=_body(3)).status_code == 200
    assert client.post("/v1/score", json=_body(2)).status_code == 200
    assert client.post("/v1/score", json=_body(1, scorer="nope")).status_code == 422
    assert client.post("/v1/score", content=b"{").status_code == 400
    assert client.get("/no/such/route").status_code == 404
    big = b'{"scorer": "recording", "items": [' + b" " * 60_000 + b"]}"
    assert client.post("/v1/score", content=big).status_code == 413

    m = samples(client)

    def get(name: str, **labels: str) -> float:
        return m.get((name, frozenset(labels.items())), 0.0)

    route = {"method": "POST", "route": "/v1/score"}
    assert get("ddpo_http_requests_total", **route, status="200") == 2
    assert get("ddpo_http_requests_total", **route, status="422") == 1
    assert get("ddpo_http_requests_total", **route, status="400") == 1
    # The raw path never becomes a label: unknown routes share one series.
    assert get("ddpo_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert get("ddpo_http_request_duration_seconds_count", **route) == 5
    assert get("ddpo_errors_total", kind="unknown-scorer") == 1
    assert get("ddpo_errors_total", kind="invalid-json") == 1
    assert get("ddpo_errors_total", kind="body-too-large") == 1
    assert get("ddpo_errors_total", kind="http-404") == 1
    # Device batches: two requests of 3 and 2 items (sequential, so not coalesced).
    assert get("ddpo_scorer_batch_size_count", scorer="recording") == 2
    assert get("ddpo_scorer_batch_size_sum", scorer="recording") == 5
    assert get("ddpo_scorer_batch_size_bucket", scorer="recording", le="2.0") == 1
    assert get("ddpo_scored_items_total", scorer="recording") == 5
    assert get("ddpo_scorer_batch_duration_seconds_count", scorer="recording", outcome="ok") == 2
    assert get("ddpo_scorer_queue_depth", scorer="recording") == 0
    assert ("ddpo_http_requests_in_progress", frozenset()) in m


def test_queue_depth_counts_waiting_items() -> None:
    """While a slow batch runs, the gauge shows the items submitted and not yet scored."""
    scorer = RecordingScorer(max_batch_size=2, delay_s=0.3)
    with TestClient(create_app(ServerSettings(), {"recording": scorer})) as client:
        done = threading.Event()

        def post() -> None:
            client.post("/v1/score", json=_body(4))
            done.set()

        threading.Thread(target=post, daemon=True).start()
        deadline = time.monotonic() + 5
        while not scorer.batch_sizes and time.monotonic() < deadline:
            time.sleep(0.01)
        depth = samples(client)[("ddpo_scorer_queue_depth", frozenset({("scorer", "recording")}))]
        assert depth == 4
        assert done.wait(5)
        depth = samples(client)[("ddpo_scorer_queue_depth", frozenset({("scorer", "recording")}))]
        assert depth == 0


def test_scorer_failure_is_counted() -> None:
    class Broken(RecordingScorer):
        def score(self, images, prompts):
            raise RuntimeError("boom")

    with TestClient(create_app(ServerSettings(), {"recording": Broken()})) as client:
        assert client.post("/v1/score", json=_body(2)).status_code == 500
        m = samples(client)
    assert m[("ddpo_errors_total", frozenset({("kind", "scorer-failed")}))] == 1
    key = ("ddpo_scorer_batch_duration_seconds_count", frozenset({("scorer", "recording")}))
    assert key not in m  # the outcome label separates failures
    fail = frozenset({("scorer", "recording"), ("outcome", "error")})
    assert m[("ddpo_scorer_batch_duration_seconds_count", fail)] == 1


def test_apps_keep_separate_metrics() -> None:
    with (
        TestClient(create_app(ServerSettings(), {"recording": RecordingScorer()})) as a,
        TestClient(create_app(ServerSettings(), {"recording": RecordingScorer()})) as b,
    ):
        a.post("/v1/score", json=_body(1))
        labels = frozenset({("method", "POST"), ("route", "/v1/score"), ("status", "200")})
        assert samples(a)[("ddpo_http_requests_total", labels)] == 1
        assert ("ddpo_http_requests_total", labels) not in samples(b)


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "trainer-epoch3.batch-7"})
    assert r.headers["x-request-id"] == "trainer-epoch3.batch-7"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    # Ids that could forge log lines or bloat them are replaced, not echoed.
    for bad in ("a\tb", "x" * 200, "id with spaces"):
        echoed = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert echoed != bad and len(echoed) == 32
    # Errors carry it too, so a client can quote it in a bug report.
    r = client.post("/v1/score", json=_body(1, scorer="nope"), headers={"X-Request-ID": "e1"})
    assert r.status_code == 422 and r.headers["x-request-id"] == "e1"


def test_access_log_is_json_with_request_id(client: TestClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("reward_server.access")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        client.post("/v1/score", json=_body(2), headers={"X-Request-ID": "req-42"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    entry = next(e for e in entries if e.get("route") == "/v1/score")
    assert entry["request_id"] == "req-42"
    assert entry["status"] == 200 and entry["method"] == "POST" and entry["level"] == "info"
    assert entry["duration_ms"] >= 0 and entry["logger"] == "reward_server.access"
    assert entry["ts"].endswith("+00:00")


def test_json_formatter_uses_the_current_request_id() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    token = request_id_var.set("abc")
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert entry == {**entry, "message": "hello world", "request_id": "abc", "level": "warning"}


def test_configure_logging_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging("info", "json")
        configure_logging("warning", "text")
        ours = [h for h in root.handlers if getattr(h, "_ddpo", False)]
        assert len(ours) == 1 and all(h in root.handlers for h in before)
    finally:
        for h in root.handlers[:]:
            if getattr(h, "_ddpo", False):
                root.removeHandler(h)
        root.setLevel(level)


def test_shutdown_finishes_in_flight_batches_and_refuses_new_work() -> None:
    """SIGTERM as uvicorn handles it: the running request completes, then the app drains."""
    scorer = RecordingScorer(max_batch_size=2, delay_s=0.4)
    settings = ServerSettings(shutdown_timeout_s=10)
    app = create_app(settings, {"recording": scorer})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = uvicorn_options(settings, "warning")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)

    result: dict[str, Any] = {}

    def post() -> None:
        result["response"] = httpx.post(f"{base}/v1/score", json=_body(4), timeout=10)

    client = threading.Thread(target=post)
    client.start()
    while not scorer.batch_sizes:  # the first of two batches is running
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.should_exit = True  # what uvicorn's SIGTERM handler does
    client.join(10)
    thread.join(15)
    assert not thread.is_alive(), "server did not stop"
    response = result["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["scores"]) == 4 and scorer.batch_sizes == [2, 2]
    runtime = app.state.runtime
    assert runtime.draining
    assert all(not b._thread.is_alive() for b in runtime.batchers.values())
    with pytest.raises(httpx.TransportError):  # the listener is closed
        httpx.get(f"{base}/readyz", timeout=1)


def test_draining_runtime_reports_not_ready(client: TestClient) -> None:
    client.app.state.runtime.begin_drain()
    r = client.get("/readyz")
    assert r.status_code == 503 and "shutting down" in r.json()["detail"]
    assert client.post("/v1/score", json=_body(1)).status_code == 503


def test_uvicorn_options_bound_the_drain() -> None:
    opts = uvicorn_options(ServerSettings(shutdown_timeout_s=12), "INFO")
    assert opts["timeout_graceful_shutdown"] == 12
    assert opts["log_config"] is None and opts["access_log"] is False
    assert opts["log_level"] == "info"
