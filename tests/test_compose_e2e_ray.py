"""docker-compose.ray.yml for real: the reward server as a Ray head plus a worker node.

Same gate as tests/test_compose_e2e.py (DDPO_DOCKER_E2E=1, an engine with
Compose v2; docker/e2e.sh). The CPU stack with the Ray file and the
`ray-workers` profile: the head waits for the worker, deploys
deploy/ray-serve-cpu.yaml (prompt_fidelity in two replicas), and the trainer,
unchanged, trains over the compose network with the API key. The worker node is
killed mid-run: Serve moves its replica to the head and every sample is still
scored once. `docker compose stop` ends the head through its SIGTERM handler.
With DDPO_RAY_HAPROXY=1 in the environment the same runs on Ray's HAProxy ingress.
"""

from __future__ import annotations

import json
import os
import re
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

from tests.test_compose_e2e import ROOT, Stack, _base_image, _docker_ready, _free_port

pytestmark = [pytest.mark.slow, pytest.mark.docker]
EPOCHS = 6
SAMPLES_PER_EPOCH = 8  # sample_batch_size 4 x 2 batches
RUN = "e2e-ray"
DEPLOYMENT = "scorer_prompt_fidelity"

#: Run inside the head: the alive nodes and the node of each live scorer replica.
CLUSTER_PROBE = f"""
import json, ray
from ray.util.state import list_actors
ray.init(address="auto", logging_level="ERROR")
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
replicas = [a.node_id for a in actors if "{DEPLOYMENT}" in (a.class_name or "")]
print(json.dumps({{"nodes": nodes, "replica_nodes": replicas}}))
"""


def _config() -> str:
    text = (ROOT / "configs" / "tiny-cpu.toml").read_text()
    values = {
        "num_epochs": EPOCHS,
        "save_freq": EPOCHS,
        "sample_batch_size": 4,
        "train_batch_size": 4,
    }
    lines = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {values[key]}" if key in values and "=" in line else line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def ray_stack() -> Iterator[Stack]:
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    configs = Path(tempfile.mkdtemp(prefix="ddpo-e2e-ray-"))
    configs.chmod(0o755)
    (configs / "e2e-ray.toml").write_text(_config())
    key, port = secrets.token_hex(16), _free_port()
    env = {
        **os.environ,
        "DDPO_API_KEY": key,
        "DDPO_SERVER_PORT": str(port),
        "DDPO_RAY_DASHBOARD_PORT": str(_free_port()),
        "DDPO_RAY_MIN_NODES": "2",
        "DDPO_CPU_BASE_IMAGE": _base_image(),
        "DDPO_CONFIGS_DIR": str(configs),
        "DDPO_CPU_TRAIN_CONFIG": "e2e-ray.toml",
        "DDPO_CPU_RUN_NAME": RUN,
        "COMPOSE_PROFILES": "ray-workers",
    }
    extra = [ROOT / "docker-compose.ray.yml"]
    stack = Stack(f"ddpo-e2e-ray-{secrets.token_hex(3)}", env, configs, key, port, extra)
    try:
        start = time.monotonic()
        stack.compose("build", timeout=3600)
        stack.timings["build_s"] = time.monotonic() - start
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        shutil.rmtree(configs, ignore_errors=True)


def _cluster(stack: Stack) -> dict:
    out = stack.compose("exec", "-T", "reward-server", "python3", "-c", CLUSTER_PROBE).stdout
    return json.loads(out.strip().splitlines()[-1])


def _replica_counts(stack: Stack) -> dict[str, float]:
    """Items scored per scorer replica, from the ingress's /metrics."""
    answer = httpx.get(
        f"http://127.0.0.1:{stack.port}/metrics",
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    pattern = r'^ddpo_replica_scored_items_total\{[^}]*replica="([^"]+)"[^}]*\} (\S+)'
    return {m[0]: float(m[1]) for m in re.findall(pattern, answer.text, re.MULTILINE)}


def _burst(stack: Stack, requests: int) -> None:
    """`requests` concurrent prompt_fidelity requests of 4 images each, all answered."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.images import encode_png

    rng = np.random.default_rng(0)
    items = [
        {
            "id": str(i),
            "prompt": "a red circle on a white background",
            "image": encode_png(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).model_dump(),
        }
        for i in range(4)
    ]
    body = {"scorer": "prompt_fidelity", "items": items}
    headers = {"Authorization": f"Bearer {stack.key}"}
    url = f"http://127.0.0.1:{stack.port}/v1/score"
    with ThreadPoolExecutor(requests) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(url, json=body, headers=headers, timeout=120),
                range(requests),
            )
        )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers][:2]


def test_trainer_scores_through_ray_serve_across_a_lost_node(ray_stack: Stack) -> None:
    stack = ray_stack
    image = "ddpo/reward-server-ray:latest"
    ids = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", image, "-u"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert ids.strip() == "1000"

    start = time.monotonic()
    stack.compose("up", "-d", "reward-server", "ray-worker")
    stack.wait_healthy("reward-server", timeout=600)
    stack.timings["serve_healthy_s"] = time.monotonic() - start
    cluster = _cluster(stack)
    assert len(cluster["nodes"]) == 2, cluster
    if os.environ.get("DDPO_RAY_HAPROXY") == "1":  # the ingress is HAProxy, not Serve's proxy
        procs = stack.compose("exec", "-T", "reward-server", "sh", "-c", "cat /proc/[0-9]*/comm")
        assert "haproxy" in procs.stdout.split(), procs.stdout
    assert len(set(cluster["replica_nodes"])) == 2, f"replicas not spread: {cluster}"

    # A burst of concurrent requests reaches both replicas, so both nodes serve (with one
    # request at a time, as the trainer sends them, the router may keep to one replica).
    _burst(stack, requests=16)
    counts = _replica_counts(stack)
    assert sum(v > 0 for v in counts.values()) == 2, f"one replica did all the work: {counts}"
    before = sum(counts.values())

    stack.compose("up", "-d", "--no-deps", "trainer")
    trainer = stack.container("trainer")
    deadline = time.monotonic() + 900
    while not stack.epochs(trainer, RUN):
        assert stack.inspect("trainer")["State"]["Running"], stack.compose("logs").stdout[-4000:]
        assert time.monotonic() < deadline
        time.sleep(2)
    stack.compose("kill", "ray-worker")  # a node lost mid-run, its replica with it
    assert stack.inspect("trainer")["State"]["Running"], "the run ended before the node was lost"
    code = stack.wait_exit("trainer")
    stack.timings["train_s"] = time.monotonic() - start
    assert code == 0, stack.compose("logs", "trainer").stdout[-4000:]
    epochs = stack.epochs(trainer, RUN)
    assert [e["epoch"] for e in epochs] == list(range(EPOCHS))
    for e in epochs:  # every sample scored once: none dropped, none filled in
        assert e["num_samples"] == SAMPLES_PER_EPOCH and e["num_dropped"] == 0, e
        assert e["num_filled"] == 0 and e["reward_mean"] == e["reward_mean"], e
    # The ingress's counters are per ingress replica: when the lost node held the ingress,
    # Serve restarted it on the head and they began again (the trainer's counts above
    # are the exactly-once check). Either way the live replicas scored this run's items.
    total = sum(_replica_counts(stack).values())
    if total >= before:  # the same ingress throughout: each item counted exactly once
        assert total - before == EPOCHS * SAMPLES_PER_EPOCH, (before, total)
    else:  # a restarted ingress: what it counted since
        assert 0 < total <= EPOCHS * SAMPLES_PER_EPOCH, (before, total)
    # Serve replaced the lost node's replica on the head: two replicas, one node.
    deadline = time.monotonic() + 120
    while len((cluster := _cluster(stack))["replica_nodes"]) != 2:
        assert time.monotonic() < deadline, cluster
        time.sleep(2)
    assert len(cluster["nodes"]) == 1, cluster

    stack.compose("stop", "reward-server")
    state = stack.inspect("reward-server")["State"]
    assert state["ExitCode"] in (0, 143) and not state["OOMKilled"], state
    assert "stopping: Serve first" in stack.compose("logs", "reward-server").stderr + (
        stack.compose("logs", "reward-server").stdout
    )


def test_down_v_leaves_nothing(ray_stack: Stack) -> None:
    stack = ray_stack
    stack.compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={stack.project}"
    for kind in ("ps -a", "network ls", "volume ls"):
        cmd = ["docker", *kind.split(), "-q", "--filter", label]
        left = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        assert left == "", f"{kind}: {left}"
    print(json.dumps(stack.timings))
