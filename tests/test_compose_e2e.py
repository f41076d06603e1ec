"""`docker compose up` for real: both images built, the CPU stack run end to end.

Runs only with DDPO_DOCKER_E2E=1 and a Docker engine with Compose v2 (skipped
otherwise): a cold build takes many minutes, so CI leaves it to
docker/e2e.sh (docs/deploy.md says why). The stack is docker-compose.yml plus
docker-compose.cpu.yml under its own project name, on a free port, with a
short config of the demo's recipe; `down -v` removes it at the end.
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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL_BASE = "ddpo-local/debian-torch:2.13.0-cpu"  # docker/prepare_host.sh builds it
EPOCHS = 6
SAMPLES_PER_EPOCH = 8  # sample_batch_size 4 x 2 batches
RUN = "e2e-run"

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def _docker_ready() -> str | None:
    """Why the test cannot run here, or None."""
    if os.environ.get("DDPO_DOCKER_E2E") != "1":
        return "set DDPO_DOCKER_E2E=1 (or run docker/e2e.sh) to build and run the images"
    if shutil.which("docker") is None:
        return "no docker client"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "no Compose v2 (`docker compose`)"
    return None


def _base_image() -> str:
    """The CPU base: DDPO_CPU_BASE_IMAGE, else this project's local one, else Compose's default."""
    if os.environ.get("DDPO_CPU_BASE_IMAGE"):
        return os.environ["DDPO_CPU_BASE_IMAGE"]
    found = subprocess.run(["docker", "image", "inspect", LOCAL_BASE], capture_output=True)
    return LOCAL_BASE if found.returncode == 0 else "python:3.11-slim-bookworm"


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    configs: Path
    key: str
    port: int
    extra_files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def compose(
        self, *args: str, check: bool = True, timeout: float = 600, env: dict | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", "compose", "-p", self.project, "-f", "docker-compose.yml"]
        cmd += ["-f", "docker-compose.cpu.yml"]
        for extra in self.extra_files:
            cmd += ["-f", str(extra)]
        cmd += list(args)
        out = subprocess.run(
            cmd,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out

    def container(self, service: str) -> str:
        return self.compose("ps", "-a", "-q", service).stdout.strip()

    def inspect(self, service: str) -> dict:
        out = subprocess.run(["docker", "inspect", self.container(service)], capture_output=True)
        return json.loads(out.stdout)[0]

    def wait_healthy(self, service: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.inspect(service)["State"]
            if state.get("Health", {}).get("Status") == "healthy":
                return
            assert time.monotonic() < deadline, self.compose("logs", service).stdout[-4000:]
            time.sleep(1)

    def wait_exit(self, service: str, timeout: float = 900) -> int:
        deadline = time.monotonic() + timeout
        while (state := self.inspect(service)["State"])["Running"]:
            assert time.monotonic() < deadline, self.compose("logs", service).stdout[-4000:]
            time.sleep(2)
        return int(state["ExitCode"])

    def read(self, container: str, path: str) -> str | None:
        """A file of a container, running or stopped (`docker cp`, no new container)."""
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["docker", "cp", f"{container}:{path}", tmp], capture_output=True, text=True
            )
            if out.returncode != 0:
                return None
            found = Path(tmp) / Path(path).name
            if found.is_dir():
                return "\n".join(sorted(p.name for p in found.iterdir()))
            return found.read_text()

    def epochs(self, container: str, run: str) -> list[dict]:
        text = self.read(container, f"/outputs/{run}/metrics.jsonl") or ""
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def checkpoints(self, container: str, run: str) -> list[str]:
        return (self.read(container, f"/outputs/{run}/checkpoints") or "").split()

    def trainer_argv(self, run: str, *extra: str) -> list[str]:
        return [
            "ddpo", "train", "--config", "/configs/e2e.toml",
            "--set", "rewards.0.url=http://reward-server:8000",
            "--set", f'rewards.0.api_key="{self.key}"',
            "--set", f"output_dir=/outputs/{run}", *extra,
        ]  # fmt: skip


def _e2e_config() -> str:
    """configs/tiny-cpu.toml with fewer, smaller epochs and a checkpoint after each."""
    text = (ROOT / "configs" / "tiny-cpu.toml").read_text()
    for key, value in {
        "num_epochs": EPOCHS,
        "save_freq": 1,
        "log_images_every": 1,
        "sample_batch_size": 4,
        "train_batch_size": 4,
    }.items():
        lines = [
            f"{key} = {value}" if line.startswith(f"{key} =") else line
            for line in text.splitlines()
        ]
        text = "\n".join(lines) + "\n"
    return text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    configs = Path(tempfile.mkdtemp(prefix="ddpo-e2e-"))
    configs.chmod(0o755)  # the containers' uid reads it
    (configs / "e2e.toml").write_text(_e2e_config())
    key, port = secrets.token_hex(16), _free_port()
    env = {
        **os.environ,
        "DDPO_API_KEY": key,
        "DDPO_SERVER_PORT": str(port),
        "DDPO_CPU_BASE_IMAGE": _base_image(),
        "DDPO_CONFIGS_DIR": str(configs),
        "DDPO_CPU_TRAIN_CONFIG": "e2e.toml",
        "DDPO_CPU_RUN_NAME": RUN,
    }
    stack = Stack(f"ddpo-e2e-{secrets.token_hex(3)}", env, configs, key, port)
    try:
        start = time.monotonic()
        stack.compose("build", timeout=3600)
        stack.timings["build_s"] = time.monotonic() - start
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        shutil.rmtree(configs, ignore_errors=True)


def test_images_run_as_app_and_hold_no_secret(stack: Stack) -> None:
    for image in ("ddpo/reward-server:latest-cpu", "ddpo/trainer:latest-cpu"):
        meta = json.loads(subprocess.run(["docker", "image", "inspect", image],
                                         capture_output=True).stdout)[0]  # fmt: skip
        assert meta["Config"]["User"].split(":")[0] not in ("", "root", "0"), image
        history = subprocess.run(
            ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        env = "\n".join(meta["Config"]["Env"])
        for text in (history, env):
            assert stack.key not in text
            assert "API_KEY" not in text and "PASSWORD" not in text and "HF_TOKEN=" not in text
        ids = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "id", image, "-u"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert ids.strip() == "1000", image


def test_training_survives_a_reward_server_restart(stack: Stack) -> None:
    start = time.monotonic()
    stack.compose("up", "-d", "reward-server")
    stack.wait_healthy("reward-server")
    stack.timings["server_healthy_s"] = time.monotonic() - start
    start = time.monotonic()
    stack.compose("up", "-d", "--no-deps", "trainer")
    trainer = stack.container("trainer")
    # Restart the server once the first epoch is in, while later epochs still score.
    deadline = time.monotonic() + 900
    while not stack.epochs(trainer, RUN):
        assert stack.inspect("trainer")["State"]["Running"], stack.compose("logs").stdout[-4000:]
        assert time.monotonic() < deadline
        time.sleep(5)
    stack.compose("restart", "reward-server")
    assert stack.inspect("trainer")["State"]["Running"], "the run ended before the restart"
    code = stack.wait_exit("trainer")
    stack.timings["train_s"] = time.monotonic() - start
    logs = stack.compose("logs", "trainer").stdout
    assert code == 0, logs[-4000:]
    epochs = stack.epochs(trainer, RUN)
    assert [e["epoch"] for e in epochs] == list(range(EPOCHS))
    for e in epochs:  # every sample scored once: none dropped, none filled in
        assert e["num_samples"] == SAMPLES_PER_EPOCH and e["num_dropped"] == 0, e
        assert e["num_filled"] == 0 and e["reward_mean"] == e["reward_mean"], e
    stack.wait_healthy("reward-server")


def test_lora_in_the_outputs_volume_loads_with_diffusers(stack: Stack, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    trainer = stack.container("trainer")  # stopped; the run is in the `outputs` volume
    subprocess.run(
        ["docker", "cp", f"{trainer}:/outputs/{RUN}/lora", str(tmp_path / "lora")], check=True
    )
    pipe = StableDiffusionPipeline.from_pretrained(str(ROOT / "models" / "tiny-sd"))
    pipe.load_lora_weights(str(tmp_path / "lora"))
    assert pipe.get_active_adapters(), "no adapter loaded"
    weights = {}
    for path in (tmp_path / "lora").glob("*.safetensors"):
        weights.update(load_file(str(path)))
    ups = [v for k, v in weights.items() if any(u in k for u in ("lora_B", "lora_up", "lora.up"))]
    assert ups and any(v.abs().sum() > 0 for v in ups), "the LoRA is still zero"


def test_compose_stop_then_resume_finishes(stack: Stack) -> None:
    """`docker compose stop` mid-run: both end on SIGTERM, not killed; --resume finishes."""
    run, total = "e2e-resume", EPOCHS + 2
    config = _e2e_config().replace(f"num_epochs = {EPOCHS}\n", f"num_epochs = {total}\n")
    (stack.configs / "e2e-resume.toml").write_text(config)
    env = {"DDPO_CPU_TRAIN_CONFIG": "e2e-resume.toml", "DDPO_CPU_RUN_NAME": run}
    stack.compose("up", "-d", "trainer", env=env)
    trainer = stack.container("trainer")
    deadline = time.monotonic() + 900
    while len(stack.checkpoints(trainer, run)) < 2:
        assert stack.inspect("trainer")["State"]["Running"], stack.compose("logs").stdout[-4000:]
        assert time.monotonic() < deadline
        time.sleep(5)
    stack.compose("stop", env=env)
    for service in ("trainer", "reward-server"):
        state = stack.inspect(service)["State"]
        # 143: ended by the SIGTERM itself (137 would be the SIGKILL after the grace period).
        assert state["ExitCode"] in (0, 143) and not state["OOMKilled"], (service, state)
    kept = stack.checkpoints(trainer, run)
    assert kept and not any(c.startswith(".tmp") for c in kept), kept
    assert len(stack.epochs(trainer, run)) < total

    stack.compose("up", "-d", "reward-server", env=env)
    stack.wait_healthy("reward-server")
    argv = stack.trainer_argv(run, "--resume")
    argv[argv.index("/configs/e2e.toml")] = "/configs/e2e-resume.toml"
    out = stack.compose("run", "--rm", "trainer", *argv, env=env, timeout=1800)
    epochs = [e["epoch"] for e in stack.epochs(trainer, run)]
    assert epochs[-1] == total - 1 and sorted(set(epochs)) == list(range(total)), out.stdout[-3000:]


def test_down_v_leaves_nothing(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={stack.project}"
    for kind in ("ps", "network ls", "volume ls"):
        cmd = ["docker", *kind.split(), "-q", "--filter", label]
        if kind == "ps":
            cmd.insert(2, "-a")
        left = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        assert left == "", f"{kind}: {left}"
    print(json.dumps(stack.timings))
