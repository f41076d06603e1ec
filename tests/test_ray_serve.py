"""The reward server on Ray Serve, on a local two-node Ray cluster (issue 25).

Head and a second node (ray.cluster_utils), the tiny-CLIP `pickscore` in a
deployment of two CPU replicas, the JPEG scorer inside the ingress. The same
requests as tests/test_protocol_cases.py get the same answers as the plain app;
both replicas serve; `ddpo train` runs through it while a replica is killed and
the replica count is changed. Skipped where ray is not installed (the `ray` extra).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from ddpo.server_process import free_port  # noqa: E402
from reward_server.app import create_app  # noqa: E402
from reward_server.settings import ServerSettings  # noqa: E402
from tests.helpers.protocol_cases import (  # noqa: E402
    API_KEY,
    AUTH,
    CASES,
    Case,
    _json,
    case_settings,
    check,
    items,
)
from tests.helpers.tiny_clip_model import write_tiny_clip_model  # noqa: E402
from trainer.run_log import read_metrics  # noqa: E402

pytestmark = pytest.mark.slow

APP = "rewards"
SCORER = "scorer_pickscore"


ROOT = Path(__file__).resolve().parents[1]


def serve_config(clip_dir: Path, port: int, replicas: int) -> Any:
    """deploy/ray-serve.yaml, on CPUs: the tiny CLIP, no GPUs, small logical CPU shares
    (the cluster claims 2 CPUs per node on any machine), `replicas` pickscore replicas."""
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "deploy/ray-serve.yaml").read_text())
    config["proxy_location"] = "HeadOnly"  # every node's proxy would bind this machine's port
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    app = config["applications"][0]
    app["runtime_env"] = {}
    cpu = {"num_replicas": 2, "num_cpus": 0.25, "num_gpus": 0}
    app["args"] = {
        "settings": case_settings(clip_dir),
        "ingress": {"num_replicas": 1, "num_cpus": 0.25},
        "default_deployment": cpu,
    }
    # Counts change through Serve's own overrides: the args, and so the code, stay the same.
    app["deployments"] = [{"name": SCORER, "num_replicas": replicas}]
    return ServeDeploySchema.model_validate(config)


def deploy(config: Any, timeout_s: float = 300) -> None:
    """What `serve deploy` does (through the dashboard's REST API, not started here),
    then wait until the application runs (the client's own wait gives up after 60 s)."""
    from ray.serve.context import _get_global_client

    _get_global_client().deploy_apps(config)
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(APP)
        if app is not None and app.status == "RUNNING":
            return
        assert app is None or app.status != "DEPLOY_FAILED", app
        assert time.monotonic() < deadline, serve.status()
        time.sleep(0.5)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip_model(tmp_path_factory.mktemp("ray") / "clip", seed=7)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    nodes.add_node(num_cpus=2)
    ray.init(address=nodes.address, include_dashboard=False, log_to_driver=False)
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def port(cluster: Any) -> int:
    return free_port()


@pytest.fixture(scope="module")
def url(cluster: Any, clip_dir: Path, port: int) -> Iterator[str]:
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    deploy(serve_config(clip_dir, port, 2))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def plain(clip_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ServerSettings(**case_settings(clip_dir)))) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def replica_items(url: str) -> dict[str, float]:
    """Items each pickscore replica scored, from the ingress's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(
        r'ddpo_replica_scored_items_total\{replica="([^"]+)",scorer="pickscore"\} (\S+)', text
    )
    return {replica: float(n) for replica, n in found}


def ingress_replica() -> str:
    return next(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#ingress#")
    )


def running_replicas() -> int:
    status = serve.status().applications[APP].deployments[SCORER]
    return status.replica_states.get("RUNNING", 0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_same_answers_as_the_plain_server(case: Case, url: str, plain: TestClient) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        ray_body = check(case, case.send(client))
    plain_body = check(case, case.send(plain))
    if "scores" in plain_body:
        assert ray_body["scores"] == pytest.approx(plain_body["scores"], abs=1e-4)
        ray_body.pop("scores"), plain_body.pop("scores")
    assert ray_body == plain_body


def test_both_replicas_serve(url: str, plain: TestClient) -> None:
    before = replica_items(url)
    bodies = [_json({"scorer": "pickscore", "items": items(3, seed=s)}) for s in range(16)]

    def send(body: bytes) -> list[float]:
        r = httpx.post(f"{url}/v1/score", content=body, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["scores"]

    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(send, bodies))
    expected = [plain.post("/v1/score", content=b, headers=AUTH).json()["scores"] for b in bodies]
    for got, want in zip(served, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)  # each request its own items' scores
    after = replica_items(url)
    grew = {r: n - before.get(r, 0.0) for r, n in after.items() if n > before.get(r, 0.0)}
    assert len(grew) == 2, after
    assert sum(grew.values()) == 3 * len(bodies)


TRAIN = """
prompts = ["a red circle", "a blue square", "a green triangle"]
mixed_precision = "no"
resolution = 32
sample_num_steps = 4
sample_batch_size = 4
sample_num_batches_per_epoch = 2
train_batch_size = 4
per_prompt_stat_tracking_min_count = 2
num_epochs = 3
"""


def test_training_survives_a_killed_replica_and_a_rescale(
    url: str, clip_dir: Path, port: int, tiny_sd: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = tmp_path / "config.toml"
    config.write_text(
        f'pretrained_model = "{tiny_sd}"\noutput_dir = "{out}"\n{TRAIN}\n'
        f'[[rewards]]\nurl = "{url}"\nscorer = "pickscore"\napi_key = "{API_KEY}"\n'
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    train = subprocess.Popen(
        [sys.executable, "-m", "ddpo.cli", "train", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(train.stdout), daemon=True)
    reader.start()
    try:
        before = replica_items(url)
        deadline = time.monotonic() + 300
        while not (busy := [r for r, n in replica_items(url).items() if n > before.get(r, 0)]):
            assert train.poll() is None and time.monotonic() < deadline, "".join(log)
            time.sleep(0.1)
        victim = f"SERVE_REPLICA::{APP}#{SCORER}#{busy[0]}"  # one that is scoring this run
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        ingress = ingress_replica()
        # Serve replaces it; then the operator asks for a third replica, mid-run.
        deploy(serve_config(clip_dir, port, 3))
        deadline = time.monotonic() + 120
        while running_replicas() != 3:
            assert time.monotonic() < deadline, serve.status()
            time.sleep(0.5)
        assert train.wait(timeout=600) == 0, "".join(log)
    finally:
        if train.poll() is None:
            train.kill()
        reader.join(timeout=10)
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:  # every sample scored once: none dropped, none filled in, none extra
        assert (r["num_samples"], r["num_dropped"], r["num_filled"]) == (8, 0, 0), r
        assert r["reward_mean"] == r["reward_mean"]  # not NaN
    assert ingress_replica() == ingress, "a change of counts must not restart the ingress"
    scored = replica_items(url)  # this ingress saw the whole run
    assert busy[0] in scored and len(scored) >= 2, scored  # the victim and others after it
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert victim not in names
    assert sum(scored.values()) >= 3 * 8  # more where a request was sent again
