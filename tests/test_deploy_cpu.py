"""docker-compose.cpu.yml and the files around it, checked without a Docker engine.

The override must turn the GPU stack into one that runs anywhere: no GPU
reservations left after Compose merges it, the reward server scoring with
weights the image ships, the trainer on the built-in model with the demo's
recipe, its runs in a named volume, every variable documented, and locks that
install on every Python a base image may bring.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_deploy import (
    DOCKERFILES,
    ROOT,
    argv_of,
    env_example,
    instructions,
    interpolate,
    option,
    set_overrides,
)

CPU_FILE = ROOT / "docker-compose.cpu.yml"


class Reset:
    """Compose's `!reset` tag: the merged file drops the base file's value."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!reset", lambda loader, node: Reset())
_Loader.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_sequence(node, deep=True)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node, deep=True)
    ),
)


def cpu_compose(**overrides: str) -> dict[str, Any]:
    raw = yaml.load(CPU_FILE.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    return interpolate(raw, {**env_example(), "DDPO_API_KEY": "k", **overrides})


def test_cpu_override_drops_gpu_reservations() -> None:
    services = cpu_compose()["services"]
    for name in ("reward-server", "trainer"):
        assert isinstance(services[name]["deploy"], Reset), name
        args = services[name]["build"]["args"]
        assert args["BASE_IMAGE"].startswith("python:3.11"), args
        assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
        assert services[name]["image"].endswith(":latest-cpu"), "keep GPU and CPU tags apart"


def test_every_dockerfile_takes_base_and_torch_source_as_arguments() -> None:
    for service in DOCKERFILES:
        args = [i.args.split("=")[0] for i in instructions(service, "ARG")]
        assert {"BASE_IMAGE", "TORCH_VERSION", "TORCH_INDEX_URL"} <= set(args), args
        runs = " ".join(i.args for i in instructions(service, "RUN"))
        assert "install_torch.sh" in runs and "${TORCH_INDEX_URL}" in runs


def test_cpu_trainer_trains_the_builtin_model_against_the_server() -> None:
    from trainer.config import load_config

    services = cpu_compose(DDPO_API_KEY="0123")["services"]
    argv = argv_of(services["trainer"]["command"])
    config = Path(option(argv, "--config"))
    cfg = load_config(ROOT / "configs" / config.name, set_overrides(argv))
    assert cfg.pretrained_model == "/app/models/tiny-sd"
    # The trainer image carries the model where the config expects it.
    copies = {i.args.split()[-1]: i.args.split()[0] for i in instructions("trainer", "COPY")}
    assert copies["/app/models/tiny-sd"] == "models/tiny-sd"
    assert cfg.rewards[0].url == "http://reward-server:8000" and cfg.rewards[0].api_key == "0123"
    server_env = services["reward-server"]["environment"]
    assert cfg.rewards[0].scorer in server_env["DDPO_SCORERS"].split(",")
    assert server_env["DDPO_ALLOW_DOWNLOAD"] == "0" and server_env["DDPO_DEVICE"] == "cpu"
    # Outputs in the named volume, which tensorboard reads.
    assert "outputs:/outputs" in services["trainer"]["volumes"]
    assert "outputs:/outputs:ro" in services["tensorboard"]["volumes"]
    assert "outputs" in cpu_compose()["volumes"]
    assert str(cfg.output_dir).startswith("/outputs/")


def test_cpu_config_is_the_demo_recipe() -> None:
    """configs/tiny-cpu.toml trains as `ddpo demo` does (prompt_fidelity, its epochs)."""
    from ddpo.demo import default_epochs, demo_config
    from trainer.config import load_config

    shipped = load_config(ROOT / "configs" / "tiny-cpu.toml", [])
    demo = demo_config(
        "prompt_fidelity",
        default_epochs("prompt_fidelity"),
        shipped.output_dir,
        shipped.rewards[0].url,
        Path("/x"),
    )
    skip = {"pretrained_model", "output_dir", "rewards"}
    ours, theirs = shipped.model_dump(exclude=skip), demo.model_dump(exclude=skip)
    assert ours == theirs, {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert shipped.rewards[0].scorer == demo.rewards[0].scorer


def test_cpu_variables_are_documented() -> None:
    used: set[str] = set()
    interpolate(yaml.load(CPU_FILE.read_text(), Loader=_Loader), None, used)  # noqa: S506
    assert used - set(env_example()) == set(), "add these to .env.example"


def test_readme_names_the_cpu_command_and_the_e2e_script() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose -f docker-compose.yml -f docker-compose.cpu.yml up --build" in readme
    assert "docker/e2e.sh" in readme
    for script in ("docker/e2e.sh", "docker/prepare_host.sh", "docker/install_torch.sh"):
        assert os.access(ROOT / script, os.X_OK), script
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DDPO_LOCK_CHECK") != "1",
    reason="needs PyPI and ~4 min: DDPO_LOCK_CHECK=1 (docker/e2e.sh sets it)",
)
def test_locks_are_fresh_and_install_on_every_supported_python() -> None:
    """Resolves again for 3.11 and checks 3.12 and 3.13 against the locks (PyPI)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "lock_requirements.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
