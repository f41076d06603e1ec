"""A reward server that goes down and comes back does not end the run (issue 12, item 2).

Unit level: loopback servers that stop and start again on the same port, and
httpx.MockTransport fakes; every item's score must reach the trainer exactly
once, counted on the server side. End to end (`ddpo train` against a killed
server): tests/test_reward_outage_e2e.py.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from reward_server.app import create_app
from reward_server.scorers.human import HumanScorer
from reward_server.settings import ServerSettings
from reward_server.storage import RatingStore
from shared.protocol import ScoreRequest
from tests.helpers.loopback_server import LoopbackServer, mean_scorer_app
from tests.helpers.polling import wait_for
from trainer.config import RewardEndpoint
from trainer.reward_client import RewardClient, RewardError, gather_results

LOGGER = "trainer.reward_client"


# -- helpers ---------------------------------------------------------------------------


def mock_client(ep: RewardEndpoint, handler: Callable, **options: Any) -> RewardClient:
    """A client over httpx's MockTransport that retries fast."""
    return RewardClient(
        [ep],
        transport=httpx.MockTransport(handler),
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        **options,
    )


def solid_images(values: list[int], size: int = 4) -> np.ndarray:
    return np.stack([np.full((size, size, 3), v, dtype=np.uint8) for v in values])


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and text in r.getMessage()]


def score_ok(request: httpx.Request) -> httpx.Response:
    """A MockTransport answer scoring every item 0.5."""
    body = ScoreRequest.model_validate_json(request.content)
    scores = [0.5] * len(body.items)
    return httpx.Response(200, json={"scorer": body.scorer, "version": "1", "scores": scores})


# -- sync scorers ------------------------------------------------------------------------


def test_requests_wait_out_an_outage_and_every_item_is_scored_once(caplog) -> None:
    counts: Counter[str] = Counter()
    server = LoopbackServer(lambda: mean_scorer_app(counts.update)).start()
    ep = RewardEndpoint(url=server.url, scorer="mean", max_retries=1)
    client = RewardClient(
        [ep],
        deadline_s=3.0,  # shorter than the outage: down time must not count against it
        max_items_per_request=2,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        outage_probe_s=0.05,
        outage_log_every_s=0.5,
    )
    values = [[(13 * b + i) % 256 for i in range(3)] for b in range(5)]
    ids = [[f"b{b}-{i}" for i in range(3)] for b in range(5)]
    try:
        with caplog.at_level(logging.INFO, LOGGER):
            first = client.submit(solid_images(values[0]), ["p"] * 3, ids=ids[0])
            first.result()
            server.stop()
            late = [
                client.submit(solid_images(v), ["p"] * 3, ids=i)
                for v, i in zip(values[1:], ids[1:], strict=True)
            ]
            wait_for(client.endpoints_down, "the outage to be declared")
            down_at = time.monotonic()
            time.sleep(4.0)  # several log intervals, and longer than the 3 s deadline
            assert not any(f.done() for f in late)  # still waiting, not failed
            server.start()
            res, _ = gather_results([first, *late])
            back_at = time.monotonic()
    finally:
        client.close()
        server.stop()
    expected = np.array([x for v in values for x in v]) / 255
    np.testing.assert_allclose(res.rewards, expected, atol=1e-6)
    assert counts == Counter({i: 1 for batch in ids for i in batch})  # each scored once
    assert client.endpoints_down() == []

    down = messages(caplog, "is down")
    still = messages(caplog, "still down")
    back = messages(caplog, "is back")
    assert len(down) == 1 and len(back) == 1
    assert all(server.url in m for m in down + still + back)
    assert "600s" in down[0]  # names the budget
    assert still and all("outage budget left" in m for m in still)
    # Once per interval, not once per probe (probes run every 0.05 s).
    assert len(still) <= (back_at - down_at) / 0.5 + 1


def test_reset_and_not_ready_answers_are_waited_out_chunk_by_chunk() -> None:
    """A reset mid-request, refusals and 503 'loading' answers until /readyz says ready."""
    state = {"up": False, "resets": 0, "probes": 0}
    scored: Counter[str] = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            state["probes"] += 1
            if state["probes"] >= 4:
                state["up"] = True
            return httpx.Response(200 if state["up"] else 503, json={"detail": "loading"})
        if not state["up"]:
            if state["resets"] == 0:
                state["resets"] += 1
                raise httpx.RemoteProtocolError("Server disconnected without sending a response")
            if state["probes"] < 2:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(503, json={"detail": "scorers are still loading"})
        body = ScoreRequest.model_validate_json(request.content)
        scored.update(item.id for item in body.items)
        return score_ok(request)

    ep = RewardEndpoint(url="http://reward.test", scorer="mock", mode="sync", max_retries=1)
    with mock_client(ep, handler, max_items_per_request=2, outage_probe_s=0.01) as client:
        res = client.submit(solid_images([1] * 5), ["p"] * 5, ids=list("abcde")).result()
    assert res.rewards.tolist() == [0.5] * 5
    assert scored == Counter("abcde")  # three chunks, each answered once


def test_an_outage_past_the_budget_names_the_endpoint() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    ep = RewardEndpoint(
        url="http://reward.test", scorer="mock", mode="sync", max_retries=1, outage_budget_s=0.5
    )
    with mock_client(ep, handler, outage_probe_s=0.05) as client:
        futures = [client.submit(solid_images([1]), ["p"]) for _ in range(3)]
        with pytest.raises(RewardError) as err:
            gather_results(futures)
        assert client.endpoints_down() == []  # nothing left waiting
    msg = str(err.value)
    assert "http://reward.test" in msg and "'mock'" in msg
    assert "outage budget (outage_budget_s = 0.5)" in msg and "ConnectError" in msg
    assert re.search(r"no replica ready for \d+s", msg)


@pytest.mark.parametrize(
    ("answer", "ready", "message"),
    [
        (500, 200, "failed after 2 attempts: HTTP 500"),  # a scorer error, not an outage
        (503, 200, "failed after 2 attempts: HTTP 503"),  # server says it is ready
        (429, 503, "failed after 2 attempts: HTTP 429"),  # overload is not an outage
        (422, 503, "rejected the request: HTTP 422"),  # a real 4xx fails at once
    ],
)
def test_failures_that_are_no_outage_fail_as_before(answer: int, ready: int, message: str) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/readyz":
            return httpx.Response(ready, json={"status": "ok", "scorers": ["mock"]})
        return httpx.Response(answer, json={"detail": "no"})

    ep = RewardEndpoint(url="http://reward.test", scorer="mock", mode="sync", max_retries=1)
    with (
        mock_client(ep, handler) as client,
        pytest.raises(RewardError, match=message),
    ):
        client.submit(solid_images([1]), ["p"]).result()
    assert paths.count("/readyz") == (1 if answer in (502, 503, 504) else 0)


def test_replicas_fail_over_at_once_and_an_endpoint_is_down_only_when_all_are() -> None:
    state = {"b_up": True}
    hits: Counter[str] = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        hits[f"{host}{path}"] += 1
        if host == "a.test" or not state["b_up"]:
            raise httpx.ConnectError("connection refused", request=request)
        if path == "/readyz":
            return httpx.Response(200, json={"status": "ok", "scorers": ["mock"]})
        return score_ok(request)

    ep = RewardEndpoint(
        url=["http://a.test", "http://b.test"], scorer="mock", mode="sync", max_retries=0
    )
    with mock_client(ep, handler, outage_probe_s=0.05) as client:
        for _ in range(3):  # a refuses: b takes it at once, no retry, no outage
            assert client.submit(solid_images([1]), ["p"]).result().rewards.tolist() == [0.5]
        assert hits["b.test/v1/score"] == 3 and hits["a.test/readyz"] == 0
        state["b_up"] = False
        fut = client.submit(solid_images([1, 2]), ["p", "q"], ids=["x", "y"])
        wait_for(client.endpoints_down, "the outage to be declared")
        assert client.endpoints_down() == ["http://a.test,http://b.test"]
        state["b_up"] = True
        assert fut.result().rewards.tolist() == [0.5, 0.5]
        assert client.endpoints_down() == []


def test_outage_budget_zero_keeps_the_old_fail_fast() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    ep = RewardEndpoint(
        url="http://reward.test", scorer="mock", mode="sync", max_retries=2, outage_budget_s=0
    )
    with (
        mock_client(ep, handler) as client,
        pytest.raises(RewardError, match="failed after 3 attempts: ConnectError"),
    ):
        client.submit(solid_images([1]), ["p"]).result()
    assert paths == ["/v1/score"] * 3


# -- job scorers (human ratings) ---------------------------------------------------------


class JobServer:
    """The real app with the `human` scorer on a SQLite file; records each job request."""

    def __init__(self, db: Path, port: int | None = None) -> None:
        self.db = db
        self.requests: list[tuple[str, str]] = []  # (method, path), across restarts
        self.store: RatingStore | None = None
        self.http = LoopbackServer(self._app, port)
        self.url = self.http.url

    def _app(self) -> Any:
        self.store = RatingStore(f"sqlite:///{self.db}")
        app = create_app(
            ServerSettings(job_max_wait_s=0.5),
            {"human": HumanScorer(self.store)},
            rating_store=self.store,
        )

        async def recording(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].startswith("/v1/jobs"):
                self.requests.append((scope["method"], scope["path"]))
            await app(scope, receive, send)

        return recording

    def start(self) -> JobServer:
        self.http.start()
        return self

    def stop(self) -> None:
        self.http.stop()
        if self.store is not None:
            self.store.close()

    def job_ids(self) -> list[str]:
        with sqlite3.connect(self.db) as conn:
            return [row[0] for row in conn.execute("SELECT id FROM jobs")]


class Raters:
    """Raters who give the image of prompt "p<i>" the score i + 1; stop them before the store."""

    def __init__(self) -> None:
        self.halt = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, store: RatingStore) -> None:
        t = threading.Thread(target=self._rate, args=(store,), daemon=True)
        t.start()
        self.threads.append(t)

    def _rate(self, store: RatingStore) -> None:
        rater, _ = store.add_rater(f"rater-{len(self.threads)}")
        while not self.halt.is_set():
            task = store.claim(rater, 600)
            if task is None:
                time.sleep(0.02)
                continue
            store.submit(rater, task.lease_token, score=int(task.items[0].prompt[1:]) + 1)

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(timeout=10)


def job_client(url: str) -> RewardClient:
    ep = RewardEndpoint(url=url, scorer="human", mode="job", max_retries=1)
    return RewardClient(
        [ep],
        deadline_s=60,
        job_poll_s=0.5,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        outage_probe_s=0.05,
    )


def test_job_polls_survive_a_restart_under_the_same_job_id(tmp_path, caplog) -> None:
    server = JobServer(tmp_path / "ratings.db").start()
    client = job_client(server.url)
    raters = Raters()

    def polled() -> bool:
        return any(method == "GET" for method, _ in server.requests)

    try:
        with caplog.at_level(logging.INFO, LOGGER):
            fut = client.submit(np.zeros((3, 8, 8, 3), np.uint8), ["p0", "p1", "p2"])
            wait_for(polled, "the first poll")
            server.stop()  # nothing rated yet; the job lives on in the database file
            wait_for(client.endpoints_down, "the outage to be declared")
            server.start()
            assert server.store is not None
            raters.start(server.store)
            res = fut.result()
    finally:
        raters.stop()
        client.close()
        server.stop()
    np.testing.assert_allclose(res.rewards, [1, 2, 3])
    (job_id,) = server.job_ids()  # no second job was created
    assert [r for r in server.requests if r[0] == "POST"] == [("POST", "/v1/jobs")]
    assert {path for method, path in server.requests if method == "GET"} == {f"/v1/jobs/{job_id}"}
    assert len(messages(caplog, "is back")) == 1 and not messages(caplog, "no longer knows")


def test_a_job_the_restarted_server_lost_is_submitted_again_once(tmp_path, caplog) -> None:
    first = JobServer(tmp_path / "a.db").start()
    client = job_client(first.url)
    raters = Raters()
    second: JobServer | None = None
    try:
        with caplog.at_level(logging.INFO, LOGGER):
            fut = client.submit(np.zeros((2, 8, 8, 3), np.uint8), ["p4", "p5"])
            wait_for(first.job_ids, "the job")
            (lost,) = first.job_ids()
            first.stop()
            wait_for(client.endpoints_down, "the outage to be declared")
            second = JobServer(tmp_path / "b.db", port=first.http.port).start()  # empty store
            assert second.store is not None
            raters.start(second.store)
            res = fut.result()
    finally:
        raters.stop()
        client.close()
        first.stop()
        if second is not None:
            second.stop()
    np.testing.assert_allclose(res.rewards, [5, 6])
    (again,) = second.job_ids()
    assert again != lost
    assert [r for r in second.requests if r[0] == "POST"] == [("POST", "/v1/jobs")]
    (warning,) = messages(caplog, "no longer knows")
    assert lost in warning and "again as a new job" in warning
