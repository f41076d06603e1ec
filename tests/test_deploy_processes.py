"""The compose services' commands run as plain processes, without a Docker engine.

The reward server first, then a short training run against it, each with the
command, environment and paths docker-compose.yml gives it (container paths and
service URLs mapped to this machine's).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.deploy_files import (
    ROOT,
    argv_of,
    compose,
    dockerfile_env,
)

# -- the compose commands as plain processes -----------------------------------------

TINY_CONFIG = """
pretrained_model = "{model}"
prompts = ["a red circle", "a blue square"]
mixed_precision = "no"
resolution = 32
num_epochs = 2
sample_num_steps = 4
sample_guidance_scale = 3.0
sample_batch_size = 2
sample_num_batches_per_epoch = 2
train_batch_size = 2
per_prompt_stat_tracking_min_count = 2
log_images_every = 1

[[rewards]]
url = "http://placeholder.invalid:1"
scorer = "jpeg_compressibility"
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _localize(argv: list[str], mapping: dict[str, str]) -> list[str]:
    """Container paths and service URLs -> this machine's; `ddpo` -> this interpreter."""
    out = []
    for word in argv:
        for container, host in mapping.items():
            word = word.replace(container, host)
        out.append(word)
    if out[0] == "ddpo":
        out = [sys.executable, "-m", "ddpo.cli", *out[1:]]
    elif out[0] == "python3":
        out[0] = sys.executable
    return ["sh", str(ROOT / "docker" / "entrypoint.sh"), *out]


def _process_env(service: str, svc: dict[str, Any], mapping: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in {**dockerfile_env(service), **(svc.get("environment") or {})}.items():
        if key == "HOME" or key.startswith("PIP_"):
            continue
        for container, host in mapping.items():
            value = str(value).replace(container, host)
        env[key] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.slow
def test_compose_services_run_as_plain_processes(tmp_path: Path, tiny_sd: Path) -> None:
    key, port = "deploy-test-key", _free_port()
    services = compose(
        DDPO_API_KEY=key,
        DDPO_SCORERS="jpeg_compressibility",  # the aesthetic weights are not here
        DDPO_ALLOW_DOWNLOAD="0",
        HF_HUB_OFFLINE="1",
        DDPO_TRAIN_CONFIG="tiny.toml",
        DDPO_RUN_NAME="tiny-run",
    )["services"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.toml").write_text(TINY_CONFIG.format(model=tiny_sd))
    mapping = {
        "http://reward-server:8000": f"http://127.0.0.1:{port}",
        "/home/app/.cache/huggingface": str(tmp_path / "hf"),
        "/configs": str(tmp_path / "configs"),
        "/outputs": str(tmp_path / "outputs"),
        "/app/models": str(ROOT / "models"),
        "/data": str(tmp_path / "data"),
    }

    server_svc = services["reward-server"]
    server_argv = argv_of(server_svc["command"])
    server_argv[server_argv.index("--host") + 1] = "127.0.0.1"  # tests stay on loopback
    server_argv[server_argv.index("--port") + 1] = str(port)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            _localize(server_argv, mapping),
            env=_process_env("reward-server", server_svc, mapping),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Readiness by the compose healthcheck command itself.
        health = server_svc["healthcheck"]["test"][1:]
        health = [w.replace(":8000/", f":{port}/") for w in health]
        deadline = time.monotonic() + 30
        while subprocess.run(_localize(health, {})[2:], capture_output=True).returncode != 0:
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "reward server not healthy\n" + log_path.read_text()
            time.sleep(0.2)
        assert (tmp_path / "data").is_dir()  # the entrypoint made the writable dir

        trainer_svc = services["trainer"]
        trainer = subprocess.run(
            _localize(argv_of(trainer_svc["command"]), mapping),
            env=_process_env("trainer", trainer_svc, mapping),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert trainer.returncode == 0, trainer.stdout + trainer.stderr
        run = tmp_path / "outputs" / "tiny-run"
        epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()]
        assert epochs == [0, 1]
        assert (run / "lora").is_dir() and list((run / "tensorboard").glob("events.*"))

        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        scored = re.search(
            r'ddpo_scored_items_total\{scorer="jpeg_compressibility"\} (\S+)', metrics
        )
        assert scored and float(scored.group(1)) == 8  # 2 epochs x 2 batches x 2 images
        assert re.search(
            r'ddpo_http_requests_total\{method="POST",route="/v1/score",status="200"\}', metrics
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    # uvicorn re-raises the signal once drained, so the exit status says SIGTERM (143 in docker).
    assert server.returncode in (0, -signal.SIGTERM), log_path.read_text()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("route") == "/v1/score" and e.get("status") == 200]
    assert access and all(e["request_id"] for e in access)
    assert any("Application shutdown complete" in e["message"] for e in lines)
