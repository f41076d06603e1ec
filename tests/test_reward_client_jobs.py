"""RewardClient against job scorers (human ratings) on a live reward server.

Raters are simulated on the rating store directly; a rater scores the image
made from prompt "p<i>" with i + 1, so every expected reward is known.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from reward_server.app import create_app
from reward_server.scorers.human import HumanScorer
from reward_server.settings import ServerSettings
from reward_server.storage import RatingStore
from tests.helpers.recording_scorer import RecordingScorer
from trainer.config import RewardEndpoint
from trainer.reward_client import RewardClient, RewardError, RewardServerUnavailable


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, RatingStore]]:
    store = RatingStore(f"sqlite:///{tmp_path / 'r.db'}")
    scorers = {"human": HumanScorer(store, "score", 1), "recording": RecordingScorer()}
    app = create_app(ServerSettings(job_max_wait_s=1.0), scorers, rating_store=store)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", store
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()
    store.close()


class Raters:
    """A rater scoring every task it gets, and optionally one that grabs the first and idles."""

    def __init__(self, store: RatingStore, hoard_first: bool = False) -> None:
        self.store = store
        self.hoard_first = hoard_first
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        hoarder, _ = self.store.add_rater("hoarder")
        worker, _ = self.store.add_rater("worker")
        if self.hoard_first:
            while not self.stop.is_set() and self.store.claim(hoarder, 600) is None:
                time.sleep(0.02)
        while not self.stop.is_set():
            task = self.store.claim(worker, 600)
            if task is None:
                time.sleep(0.02)
                continue
            i = int(task.items[0].prompt[1:])
            self.store.submit(worker, task.lease_token, score=i + 1)

    def __enter__(self) -> Raters:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def images(n: int) -> np.ndarray:
    out = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    out[..., 0] = 51  # the recording fallback scorer returns red / 255 = 0.2
    return out


def prompts(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


def test_auto_mode_submits_a_job_and_waits_for_ratings(server) -> None:
    url, store = server
    ep = RewardEndpoint(url=url, scorer="human")
    with Raters(store), RewardClient([ep], deadline_s=30) as client:
        client.check_ready(timeout_s=5)
        res = client.submit(images(4), prompts(4)).result()
    np.testing.assert_allclose(res.rewards, [1, 2, 3, 4])
    assert not res.missing_mask.any()
    assert (res.num_rated, res.num_dropped, res.num_filled) == (4, 0, 0)


def test_drop_leaves_nan_and_counts(server) -> None:
    url, store = server
    ep = RewardEndpoint(url=url, scorer="human", mode="job", missing="drop")
    with Raters(store, hoard_first=True), RewardClient([ep], deadline_s=6) as client:
        res = client.submit(images(3), prompts(3)).result()
    assert np.isnan(res.rewards[0]) and res.missing_mask.tolist() == [True, False, False]
    np.testing.assert_allclose(res.rewards[1:], [2, 3])
    assert (res.num_rated, res.num_dropped, res.num_filled) == (2, 1, 0)
    assert store.waiting() == 0  # the client cancelled the job when it stopped waiting


def test_fallback_fills_from_a_sync_scorer(server) -> None:
    url, store = server
    ep = RewardEndpoint(url=url, scorer="human", missing="fallback", fallback_scorer="recording")
    # The hoarded item's job expires job_margin_s before the deadline; the fallback scorer
    # then has that long. 3 s, not the default 1 s at a 6 s deadline: a loaded CI machine
    # once took longer than 1 s (the default margin has its own test below).
    client = RewardClient([ep], deadline_s=8, job_margin_s=3)
    with Raters(store, hoard_first=True), client:
        client.check_ready(timeout_s=5)
        res = client.submit(images(3), prompts(3)).result()
    np.testing.assert_allclose(res.rewards, [0.2, 2, 3], rtol=1e-5)
    assert not res.missing_mask.any()
    assert (res.num_rated, res.num_dropped, res.num_filled) == (2, 0, 1)


def test_fail_policy_names_the_shortfall(server) -> None:
    url, store = server
    ep = RewardEndpoint(url=url, scorer="human")
    with RewardClient([ep], deadline_s=2) as client:
        fut = client.submit(images(2), prompts(2))
        with pytest.raises(RewardError, match="2 of 2 items lack ratings"):
            fut.result()


def test_check_ready_checks_modes_and_fallback(server) -> None:
    url, _ = server
    bad = [
        RewardEndpoint(url=url, scorer="human", mode="sync"),
        RewardEndpoint(url=url, scorer="recording", mode="job"),
        RewardEndpoint(url=url, scorer="human", missing="fallback", fallback_scorer="nope"),
    ]
    for ep in bad:
        with RewardClient([ep], deadline_s=5) as client, pytest.raises(RewardServerUnavailable):
            client.check_ready(timeout_s=5)


def test_fallback_needs_a_scorer_name() -> None:
    with pytest.raises(ValueError, match="fallback_scorer"):
        RewardEndpoint(url="http://x", scorer="human", missing="fallback")


def test_default_job_margin_leaves_time_for_the_missing_policy() -> None:
    ep = RewardEndpoint(url="http://127.0.0.1:9", scorer="human")
    margins = {d: RewardClient([ep], deadline_s=d).job_margin_s for d in (1, 6, 60, 600)}
    assert margins == {1: 0.5, 6: 1.0, 60: 6.0, 600: 10.0}
