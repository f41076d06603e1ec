"""The human rating queue over HTTP: jobs API, auth separation, many raters, crash safety."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient

from reward_server.app import create_app
from reward_server.scorers.human import HumanScorer
from reward_server.settings import ServerSettings
from reward_server.storage import RatingStore
from shared.images import encode_png
from shared.protocol import JobAccepted, JobStatus
from tests.helpers.recording_scorer import RecordingScorer

ROOT = Path(__file__).resolve().parents[1]
KEY = "api-key"
API = {"Authorization": f"Bearer {KEY}"}


def png(value: int = 0) -> str:
    return encode_png(np.full((8, 8, 3), value, dtype=np.uint8)).data


def job_body(n: int, scorer: str = "human", prompts: list[str] | None = None) -> dict[str, Any]:
    prompts = prompts or [f"prompt {i}" for i in range(n)]
    return {
        "scorer": scorer,
        "items": [
            {"id": f"s{i}", "prompt": prompts[i], "image": {"data": png(i)}} for i in range(n)
        ],
    }


def make_app(store: RatingStore, k: int = 1, **settings: Any) -> Any:
    scorers = {
        "human": HumanScorer(store, "score", k),
        "human_pairwise": HumanScorer(store, "pair", k),
        "recording": RecordingScorer(),
    }
    return create_app(ServerSettings(api_keys=[KEY], **settings), scorers, rating_store=store)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[RatingStore]:
    store = RatingStore(f"sqlite:///{tmp_path / 'r.db'}")
    yield store
    store.close()


def rater(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rate_next(client: Any, token: str, score: int = 5) -> dict[str, Any] | None:
    nxt = client.get("/rate/api/next", headers=rater(token))
    assert nxt.status_code == 200, nxt.text
    task = nxt.json()["task"]
    if task is None:
        return None
    body = {"lease": task["lease"], "score": score}
    if task["mode"] == "pair":
        body = {"lease": task["lease"], "choice": "a"}
    answer = client.post("/rate/api/rate", json=body, headers=rater(token))
    assert answer.status_code == 200, answer.text
    return task


# -- jobs API ------------------------------------------------------------------------


def test_job_lifecycle_with_long_poll(sqlite_store: RatingStore) -> None:
    _, token = sqlite_store.add_rater("alice")
    with TestClient(make_app(sqlite_store, job_max_wait_s=5)) as client:
        listed = {
            s["name"]: s["kind"] for s in client.get("/v1/scorers", headers=API).json()["scorers"]
        }
        assert listed == {"human": "job", "human_pairwise": "job", "recording": "sync"}

        r = client.post("/v1/jobs", json=job_body(2), headers=API)
        assert r.status_code == 202, r.text
        accepted = JobAccepted.model_validate(r.json())
        assert r.headers["location"] == f"/v1/jobs/{accepted.job_id}"
        assert accepted.status == "pending" and 3500 < accepted.expires_in_s <= 3600

        status = JobStatus.model_validate(
            client.get(f"/v1/jobs/{accepted.job_id}", headers=API).json()
        )
        assert status.status == "pending" and status.scores == [None, None]

        rate_next(client, token, score=3)
        partial = client.get(f"/v1/jobs/{accepted.job_id}", headers=API).json()
        assert partial["num_ratings"] in ([1, 0], [0, 1]) and 3.0 in partial["scores"]

        # A long poll answers as soon as the last rating lands, not at the end of the wait.
        timer = threading.Timer(0.3, rate_next, (client, token, 9))
        timer.start()
        t0 = time.monotonic()
        done = client.get(f"/v1/jobs/{accepted.job_id}?wait=5", headers=API).json()
        timer.join()
        assert done["status"] == "done" and sorted(done["scores"]) == [3.0, 9.0]
        assert time.monotonic() - t0 < 3


def test_long_poll_wait_is_capped_and_expiry_reported(sqlite_store: RatingStore) -> None:
    # The deadline is far from the cap so a slow machine cannot reach it during the first poll.
    with TestClient(make_app(sqlite_store, job_max_wait_s=0.3)) as client:
        job = client.post("/v1/jobs?deadline_s=4", json=job_body(1), headers=API).json()
        t0 = time.monotonic()
        first = client.get(f"/v1/jobs/{job['job_id']}?wait=100", headers=API).json()
        assert first["status"] == "pending" and time.monotonic() - t0 < 3  # capped at 0.3 s
        # Polls keep being capped; the job expires at its deadline and says so.
        while time.monotonic() - t0 < 30:
            view = client.get(f"/v1/jobs/{job['job_id']}?wait=100", headers=API).json()
            if view["status"] != "pending":
                break
        assert view["status"] == "expired" and view["scores"] == [None]
        assert time.monotonic() - t0 >= 3.5


def test_cancel_and_errors(sqlite_store: RatingStore) -> None:
    with TestClient(make_app(sqlite_store)) as client:
        job = client.post("/v1/jobs", json=job_body(1), headers=API).json()
        cancelled = client.delete(f"/v1/jobs/{job['job_id']}", headers=API).json()
        assert cancelled["status"] == "expired"
        assert client.get("/v1/jobs/nope", headers=API).status_code == 404
        sync = client.post("/v1/jobs", json=job_body(1, "recording"), headers=API)
        assert sync.status_code == 422 and "/v1/score" in sync.json()["detail"]
        human = client.post("/v1/score", json=job_body(1), headers=API)
        assert human.status_code == 422 and "/v1/jobs" in human.json()["detail"]
        bad = job_body(1)
        bad["items"][0]["image"]["data"] = "bm90IGEgcG5n"
        assert client.post("/v1/jobs", json=bad, headers=API).status_code == 422
        assert client.post("/v1/jobs", json=job_body(1)).status_code == 401


def test_pairwise_job_over_http(sqlite_store: RatingStore) -> None:
    tokens = [sqlite_store.add_rater(f"r{i}")[1] for i in range(2)]
    with TestClient(make_app(sqlite_store)) as client:
        body = job_body(3, "human_pairwise", prompts=["cat", "cat", "dog"])
        job = client.post("/v1/jobs", json=body, headers=API).json()
        while any(rate_next(client, t) for t in tokens):
            pass
        status = client.get(f"/v1/jobs/{job['job_id']}", headers=API).json()
        assert status["status"] == "done" and status["scores"][2] is None
        assert all(isinstance(s, float) for s in status["scores"][:2])


def test_raters_and_api_keys_are_kept_apart(sqlite_store: RatingStore) -> None:
    _, token = sqlite_store.add_rater("alice")
    with TestClient(make_app(sqlite_store)) as client:
        for path in ("/v1/scorers", "/v1/jobs/x"):
            assert client.get(path, headers=rater(token)).status_code == 403
        score = client.post("/v1/score", json=job_body(1, "recording"), headers=rater(token))
        assert score.status_code == 403 and "rater" in score.json()["detail"]
        assert client.get("/rate/api/next", headers=API).status_code == 403
        assert client.get("/rate/api/next", headers=rater("wrong")).status_code == 401
        assert client.get("/admin/stats.json", headers=rater(token)).status_code == 403
        assert client.get("/admin").status_code == 401  # the sign-in form
        assert client.get("/admin", headers=API).status_code == 200
        login = client.post("/admin/login", data={"key": KEY}, follow_redirects=False)
        assert login.status_code == 303
        page = client.get("/admin")  # the cookie is enough now
        assert page.status_code == 200 and "alice" in page.text and "Items waiting" in page.text


def test_images_only_while_leased(sqlite_store: RatingStore) -> None:
    _, token = sqlite_store.add_rater("alice")
    _, other = sqlite_store.add_rater("bob")
    with TestClient(make_app(sqlite_store)) as client:
        client.post("/v1/jobs", json=job_body(2), headers=API)
        task = client.get("/rate/api/next", headers=rater(token)).json()["task"]
        url = task["items"][0]["image_url"]
        assert client.get(url, headers=rater(token)).headers["content-type"] == "image/png"
        assert client.get(url, headers=rater(other)).status_code == 404
        assert client.get(url, headers=API).status_code == 200  # admins may look


def test_rating_page_escapes_prompts(sqlite_store: RatingStore) -> None:
    _, token = sqlite_store.add_rater("alice")
    with TestClient(make_app(sqlite_store)) as client:
        evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
        client.post("/v1/jobs", json=job_body(1, prompts=[evil]), headers=API)
        assert client.get(f"/rate/login?token={token}", follow_redirects=False).status_code == 303
        page = client.get("/rate")
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "&lt;script&gt;alert" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert 'name="viewport"' in page.text
        assert client.get("/rate/login?token=bad").status_code == 401


# -- many raters against a live server -----------------------------------------------


class LiveServer:
    """Uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def test_twenty_concurrent_raters(db_url: str) -> None:
    """No item gets more than k ratings; an idle rater means nothing is left for it."""
    k, n_items, n_raters = 3, 24, 20
    store = RatingStore(db_url)
    tokens = [store.add_rater(f"r{i}") for i in range(n_raters)]
    violations: list[str] = []
    try:
        with LiveServer(make_app(store, k=k)) as live:
            job = httpx.post(f"{live.url}/v1/jobs", json=job_body(n_items), headers=API).json()

            def work(rater_id: int, token: str) -> None:
                rng = random.Random(rater_id)
                with httpx.Client(base_url=live.url, headers=rater(token), timeout=30) as c:
                    while True:
                        task = c.get("/rate/api/next").json()["task"]
                        if task is None:
                            violations.extend(idle_violations(store, job["job_id"], rater_id, k))
                            return
                        time.sleep(rng.uniform(0, 0.01))
                        r = c.post("/rate/api/rate", json={"lease": task["lease"], "score": 5})
                        assert r.status_code == 200, r.text

            threads = [threading.Thread(target=work, args=t) for t in tokens]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            status = httpx.get(f"{live.url}/v1/jobs/{job['job_id']}", headers=API).json()
    finally:
        store.close()
    assert violations == []
    assert status["status"] == "done" and status["num_ratings"] == [k] * n_items


def idle_violations(store: RatingStore, job_id: str, rater_id: int, k: int) -> list[str]:
    """Items a just-idled rater could have taken: under k ratings+leases and not rated by it."""
    now = time.time()
    out = []
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT i.id,"
                " (SELECT count(*) FROM ratings r WHERE r.item_id = i.id),"
                " (SELECT count(*) FROM leases l WHERE l.item_id = i.id AND l.expires_at > :now),"
                " (SELECT count(*) FROM ratings r WHERE r.item_id = i.id AND r.rater_id = :me)"
                " FROM items i WHERE i.job_id = :job"
            ),
            {"now": now, "me": rater_id, "job": job_id},
        ).all()
    for item_id, rated, leased, mine in rows:
        if rated > k:
            out.append(f"item {item_id} has {rated} > {k} ratings")
        if rated + leased < k and not mine:
            out.append(f"item {item_id} was free ({rated} rated, {leased} leased) for idle rater")
    return out


# -- crash safety --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(db_url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": db_url, "DDPO_API_KEYS": KEY, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "reward_server", "--scorers", "human", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "reward server exited at start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError("reward server did not become ready")


def test_acknowledged_ratings_survive_sigkill(db_url: str) -> None:
    store = RatingStore(db_url)
    _, token = store.add_rater("alice")
    store.close()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    acknowledged: set[int] = set()
    proc = _start_server(db_url, port)
    try:
        job = httpx.post(f"{base}/v1/jobs", json=job_body(12), headers=API).json()
        for _round in range(3):
            with httpx.Client(base_url=base, headers=rater(token), timeout=10) as c:
                for _ in range(3):
                    task = c.get("/rate/api/next").json()["task"]
                    r = c.post("/rate/api/rate", json={"lease": task["lease"], "score": 7})
                    assert r.status_code == 200
                    acknowledged.add(r.json()["rating_id"])
            proc.send_signal(signal.SIGKILL)  # between ratings: no shutdown of any kind
            proc.wait(timeout=10)
            proc = _start_server(db_url, port)
        status = httpx.get(f"{base}/v1/jobs/{job['job_id']}", headers=API).json()
    finally:
        proc.kill()
        proc.wait(timeout=10)
    store = RatingStore(db_url)
    try:
        stored = {row["rating_id"] for row in store.export_rows()}
    finally:
        store.close()
    assert stored == acknowledged and len(stored) == 9
    assert sum(status["num_ratings"]) == 9
