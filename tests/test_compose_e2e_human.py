"""The `human` profile for real: ratings kept in the compose PostgreSQL survive its restart.

Same gate as tests/test_compose_e2e.py (DDPO_DOCKER_E2E=1, an engine with
Compose v2; docker/e2e.sh). The reward server of the CPU stack scores `human`
with DATABASE_URL pointing at the `postgres` service; a rater invited inside
the server container rates a job's two images over the published port, then
`docker compose restart postgres` and the job and its ratings are still there.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.test_compose_e2e import Stack, _base_image, _docker_ready, _free_port

pytestmark = [pytest.mark.slow, pytest.mark.docker]
LOCAL_POSTGRES = "ddpo-local/postgres:15"  # docker/prepare_host.sh builds it


def _postgres_image() -> str:
    if os.environ.get("DDPO_POSTGRES_IMAGE"):
        return os.environ["DDPO_POSTGRES_IMAGE"]
    found = subprocess.run(["docker", "image", "inspect", LOCAL_POSTGRES], capture_output=True)
    return LOCAL_POSTGRES if found.returncode == 0 else "postgres:17.6-bookworm"


@pytest.fixture
def human_stack() -> Iterator[Stack]:
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="ddpo-e2e-human-"))
    override = tmp / "human.yml"
    override.write_text(
        "services:\n  reward-server:\n    environment:\n"
        "      DDPO_SCORERS: human\n      DDPO_RATINGS_PER_ITEM: '1'\n"
    )
    password, key, port = secrets.token_hex(12), secrets.token_hex(16), _free_port()
    env = {
        **os.environ,
        "DDPO_API_KEY": key,
        "DDPO_SERVER_PORT": str(port),
        "DDPO_CPU_BASE_IMAGE": _base_image(),
        "DDPO_POSTGRES_IMAGE": _postgres_image(),
        "POSTGRES_PASSWORD": password,
        "DDPO_DATABASE_URL": f"postgresql://ddpo:{password}@postgres:5432/ddpo",
        "COMPOSE_PROFILES": "human",
    }
    stack = Stack(f"ddpo-e2e-human-{secrets.token_hex(3)}", env, tmp, key, port, [override])
    try:
        stack.compose("build", "reward-server", timeout=3600)
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _job(stack: Stack, http: httpx.Client) -> str:
    from shared.images import encode_png

    rng = np.random.default_rng(0)
    items = [
        {
            "id": str(i),
            "prompt": "a red circle",
            "image": encode_png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).model_dump(),
        }
        for i in range(2)
    ]
    answer = http.post("/v1/jobs", json={"scorer": "human", "items": items})
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def test_ratings_in_postgres_survive_its_restart(human_stack: Stack) -> None:
    from reward_server.scripted_rater import ScriptedRater, split_invite

    stack = human_stack
    stack.compose("up", "-d", "reward-server")  # starts postgres first (the profile)
    stack.wait_healthy("postgres", timeout=120)
    stack.wait_healthy("reward-server")
    link = stack.compose("exec", "-T", "reward-server", "ddpo", "raters", "add", "alice").stdout
    _, token = split_invite(link.strip().splitlines()[-1])
    base = f"http://127.0.0.1:{stack.port}"
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {stack.key}"}, timeout=30)
    job = _job(stack, http)
    rater = ScriptedRater(f"{base}/rate/login?token={token}")
    assert rater.rate_one() and rater.rate_one()
    before = http.get(f"/v1/jobs/{job}").json()
    assert before["status"] == "done" and before["num_ratings"] == [1, 1], before

    stack.compose("restart", "postgres")
    stack.wait_healthy("postgres", timeout=120)
    deadline = time.monotonic() + 60
    while (after := http.get(f"/v1/jobs/{job}")).status_code != 200:
        assert time.monotonic() < deadline, after.text  # the pool reconnects
        time.sleep(1)
    assert after.json()["scores"] == before["scores"], (before, after.json())
    exported = stack.compose(
        "exec", "-T", "reward-server", "ddpo", "ratings", "export", "--format", "jsonl"
    ).stdout
    rows = [json.loads(line) for line in exported.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and {r["rater"] for r in rows} == {"alice"}, rows
    rater.stop()
    http.close()
