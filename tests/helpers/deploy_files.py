"""Reading the deployment files as Docker and Compose would: Dockerfiles, compose, .dockerignore.

Shared by the deployment tests (tests/test_deploy.py, tests/test_deploy_processes.py),
which check these files without a Docker engine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
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
