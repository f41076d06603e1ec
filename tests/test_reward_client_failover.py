"""Reward endpoints with several replica URLs: spreading, failover, cool-down, check_ready.

Two real uvicorn stub servers on loopback (one is shut down mid-run), plus
httpx.MockTransport tests for the cool-down timing.
"""

from __future__ import annotations

import logging
import socket
import time

import httpx
import numpy as np
import pytest

from tests.helpers.loopback_server import LoopbackServer, mean_scorer_app
from trainer.config import RewardEndpoint
from trainer.reward_client import (
    RewardClient,
    RewardError,
    RewardServerUnavailable,
    gather_results,
)


class StubServer(LoopbackServer):
    """A started v1 reward server with one scorer, "mean", that logs each request's item ids."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        super().__init__(lambda: mean_scorer_app(self.requests.append))
        self.start()


@pytest.fixture
def servers():
    pair = [StubServer(), StubServer()]
    yield pair
    for s in pair:
        if s.thread.is_alive():
            s.stop()


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def solid_images(values: list[int], size: int = 4) -> np.ndarray:
    return np.stack([np.full((size, size, 3), v, dtype=np.uint8) for v in values])


def test_url_may_be_a_list() -> None:
    assert RewardEndpoint(url="http://a", scorer="s").urls == ["http://a"]
    ep = RewardEndpoint(url=["http://a", "http://b/"], scorer="s")
    assert ep.urls == ["http://a", "http://b/"]
    for bad in ([], ["http://a", "http://a/"], [""]):
        with pytest.raises(ValueError, match="url"):
            RewardEndpoint(url=bad, scorer="s")


def test_batches_spread_across_replicas_and_fail_over_when_one_dies(servers) -> None:
    a, b = servers
    # max_retries=0: failing over to the other replica must not need a retry.
    ep = RewardEndpoint(url=[a.url, b.url], scorer="mean", max_retries=0)
    values = [[(17 * i + j) % 256 for j in range(3)] for i in range(12)]
    with RewardClient([ep], backoff_base_s=0.01, backoff_max_s=0.02) as client:
        early = [client.submit(solid_images(v), ["p"] * 3) for v in values[:4]]
        gather_results(early)
        assert a.requests and b.requests  # both replicas took batches
        assert len(a.requests) + len(b.requests) == 4

        b.stop()
        seen_by_a = len(a.requests)
        late = [client.submit(solid_images(v), ["p"] * 3) for v in values[4:]]
        res, _ = gather_results(early + late)
        assert len(a.requests) - seen_by_a == 8  # every later batch was scored by a
        assert client.url_in_cooldown(b.url) and not client.url_in_cooldown(a.url)
    expected = np.array([x for v in values for x in v]) / 255
    np.testing.assert_allclose(res.rewards, expected, atol=1e-6)


def test_chunks_of_one_batch_are_spread(servers) -> None:
    a, b = servers
    ep = RewardEndpoint(url=[a.url, b.url], scorer="mean")
    values = list(range(40))
    with RewardClient([ep], max_items_per_request=5) as client:
        res = client.submit(solid_images(values), ["p"] * 40).result()
    np.testing.assert_allclose(res.rewards, np.array(values) / 255, atol=1e-6)
    assert len(a.requests) + len(b.requests) == 8
    assert a.requests and b.requests


def ok(n: int) -> httpx.Response:
    return httpx.Response(200, json={"scorer": "mock", "version": "1", "scores": [0.5] * n})


def test_failed_replica_is_avoided_for_the_cooldown() -> None:
    hits = {"a.test": 0, "b.test": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        hits[request.url.host] += 1
        return httpx.Response(503, text="down") if request.url.host == "a.test" else ok(1)

    ep = RewardEndpoint(
        url=["http://a.test", "http://b.test"], scorer="mock", mode="sync", max_retries=0
    )
    with RewardClient(
        [ep], transport=httpx.MockTransport(handler), failover_cooldown_s=0.3
    ) as client:
        for _ in range(6):
            assert client.submit(solid_images([1]), ["p"]).result().rewards.tolist() == [0.5]
        assert hits == {"a.test": 1, "b.test": 6}  # a failed once, then was left alone
        time.sleep(0.35)
        for _ in range(2):
            client.submit(solid_images([1]), ["p"]).result()
        assert hits["a.test"] == 2 and hits["b.test"] == 8  # tried again after the cool-down


def test_all_replicas_failing_uses_up_the_retries() -> None:
    hits: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(request.url.host)
        return httpx.Response(503, text="down")

    # outage_budget_s=0: /readyz is 503 too, which would otherwise be waited out as an outage
    ep = RewardEndpoint(
        url=["http://a.test", "http://b.test"],
        scorer="mock",
        mode="sync",
        max_retries=1,
        outage_budget_s=0,
    )
    with (
        RewardClient(
            [ep], transport=httpx.MockTransport(handler), backoff_base_s=0.01, backoff_max_s=0.02
        ) as client,
        pytest.raises(RewardError, match="failed after 3 attempts: HTTP 503"),
    ):
        client.submit(solid_images([1]), ["p"]).result()
    assert sorted(set(hits)) == ["a.test", "b.test"]


def test_check_ready_needs_one_replica_per_endpoint(servers, caplog) -> None:
    a, _ = servers
    down = dead_url()
    ep = RewardEndpoint(url=[down, a.url], scorer="mean")
    with RewardClient([ep]) as client, caplog.at_level(logging.WARNING, "trainer.reward_client"):
        client.check_ready(timeout_s=5)
        assert client.url_in_cooldown(down) and not client.url_in_cooldown(a.url)
        np.testing.assert_allclose(
            client.submit(solid_images([51]), ["p"]).result().rewards, [0.2], atol=1e-6
        )
    assert any(down in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records)

    down2 = dead_url()
    ep = RewardEndpoint(url=[down, down2], scorer="mean")
    with RewardClient([ep]) as client, pytest.raises(RewardServerUnavailable) as err:
        client.check_ready(timeout_s=5)
    assert down in str(err.value) and down2 in str(err.value)


def test_check_ready_fails_when_no_replica_serves_the_scorer(servers) -> None:
    a, b = servers
    ep = RewardEndpoint(url=[a.url, b.url], scorer="nope")
    with RewardClient([ep]) as client, pytest.raises(RewardServerUnavailable) as err:
        client.check_ready(timeout_s=5)
    assert a.url in str(err.value) and b.url in str(err.value) and "'nope'" in str(err.value)
