"""Regenerate docker/requirements-{trainer,server,ray}.txt, the exact pins the images install.

Why a script and not `pip freeze`: the images take torch (and its CUDA wheels)
from the PyTorch base image, so a lock must pin everything *else* an extra
needs, resolved for the base image's Python and torch version, without ever
asking pip to replace that torch. pip resolves here against a stand-in torch
wheel of the same version with no dependencies, so the CUDA tree stays out.

    python docker/lock_requirements.py            # rewrite the three files
    python docker/lock_requirements.py --check    # exit 1 if they are stale
    python docker/lock_requirements.py --only ray # one lock (the server's stays within ray's)

One lock serves every Python from 3.11 to 3.13: it is resolved for the oldest
(so no pin needs a newer interpreter), then resolved again for each newer one
with the lock as constraints, which fails if a pin has no wheel for that Python
or if that Python would need a package the lock lacks. Why a range: the CUDA
base image brings its own Python (conda's, in /opt/conda; 3.11 in the releases
we know of, docs/deploy.md), the CPU images Debian's (3.11 in Debian 12, 3.13 in
Debian 13), and the torch CPU wheel at hand is cp311.

Needs PyPI access; run it after changing dependencies in pyproject.toml or the
base image tag in the Dockerfiles (tests/test_deploy.py checks they agree).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
#: Pythons the lock must install on; resolved for the first, checked on the others.
PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
    "any",
]
#: Packages the base image owns; a lock line for one of these would swap out its CUDA build.
BASE_OWNED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
LOCKS = {
    "ray": "requirements-ray.txt",
    "server": "requirements-server.txt",
    "trainer": "requirements-trainer.txt",
}
#: Locks resolved within another's pins: the server's within the Ray Serve image's (a
#: superset: the server plus ray[serve]), so that image adds packages and moves none.
WITHIN = {"server": "ray"}
#: The Dockerfile each lock's image is built from.
DOCKERFILES = {"trainer": "trainer", "server": "reward-server", "ray": "reward-server"}


def base_image(dockerfile: Path) -> str:
    """The default of `ARG BASE_IMAGE=...` in a Dockerfile."""
    match = re.search(r"^ARG BASE_IMAGE=(\S+)", dockerfile.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"{dockerfile}: no `ARG BASE_IMAGE=...` line")
    return match.group(1)


def torch_version(image: str) -> str:
    """pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime -> 2.13.0."""
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", image)
    if match is None:
        raise SystemExit(f"base image {image!r} is not a pytorch/pytorch runtime tag")
    return match.group(1)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_requirements(extra: str) -> list[str]:
    """The project's base dependencies plus an extra's, self-references expanded."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    name = _normalize(project["name"])
    extras = project["optional-dependencies"]
    out = list(project["dependencies"]) + list(meta["build-system"]["requires"])
    todo, seen = [extra], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for req in extras[current]:
            self_ref = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", _normalize(req))
            if self_ref:
                todo += [e.strip() for e in self_ref.group(1).split(",")]
            else:
                out.append(req)
    return out


def _fake_torch(directory: Path, version: str) -> None:
    """A dependency-free `torch` wheel whose local version outranks PyPI's same release."""
    dist = f"torch-{version}+base.dist-info"
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}+base\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: lock\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(directory / f"torch-{version}+base-py3-none-any.whl", "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)


def _pip_env() -> dict[str, str]:
    """This machine's pip settings minus local wheel folders and indexes: PyPI only, so a
    local torch build (say a +cpu wheel with dependencies) cannot stand in for the base's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_INDEX_URL")}
    env.pop("PIP_EXTRA_INDEX_URL", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def resolve(
    requirements: list[str], torch: str, python: str, constraints: str | None = None
) -> dict[str, str]:
    """name -> version of everything pip would install for the image (torch excluded).

    `constraints`: a lock's text; pip then must stay within it (or fails).
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        _fake_torch(tmpdir, torch)
        report = tmpdir / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet"]
        cmd += ["--ignore-installed", "--report", str(report), "--target", str(tmpdir / "t")]
        cmd += ["--python-version", python, "--only-binary=:all:"]
        cmd += ["--find-links", str(tmpdir)]
        if constraints is not None:
            (tmpdir / "constraints.txt").write_text(constraints)
            cmd += ["--constraint", str(tmpdir / "constraints.txt")]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        cmd += [*requirements, f"torch=={torch}"]
        subprocess.run(cmd, check=True, env=_pip_env())
        installed = json.loads(report.read_text())["install"]
    pins = {}
    for item in installed:
        name = _normalize(item["metadata"]["name"])
        if not BASE_OWNED.match(name):
            pins[name] = item["metadata"]["version"]
    return pins


def check_newer_pythons(requirements: list[str], torch: str, lock: str) -> list[str]:
    """Problems installing `lock` on the newer Pythons of PYTHON_VERSIONS (empty: none)."""
    pins = parse_lock(lock)
    problems = []
    for python in PYTHON_VERSIONS[1:]:
        try:
            got = resolve(requirements, torch, python, constraints=lock)
        except subprocess.CalledProcessError:
            problems.append(f"Python {python}: pip cannot install the lock (see above)")
            continue
        extra = sorted(set(got) - set(pins))
        if extra:
            problems.append(f"Python {python} also needs {', '.join(extra)}")
    return problems


def parse_lock(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_normalize(name)] = version
    return pins


def render(extra: str, image: str, torch: str, pins: dict[str, str]) -> str:
    lines = [
        f"# Exact pins for the {extra} image on linux/amd64, resolved for Python "
        f"{PYTHON_VERSIONS[0]} and checked to install on {', '.join(PYTHON_VERSIONS[1:])}; "
        f"torch from the base image ({image} by default).",
        "# Generated by `python docker/lock_requirements.py`; do not edit by hand.",
        "# torch comes from the base image; its pin only makes pip fail instead of replacing it.",
        f"torch=={torch}",
    ]
    lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--only", nargs="+", choices=sorted(LOCKS), help="just these locks")
    args = parser.parse_args()
    stale = []
    for extra, filename in LOCKS.items():
        image = base_image(DOCKER / f"{DOCKERFILES[extra]}.Dockerfile")
        torch = torch_version(image)
        requirements = extra_requirements(extra)
        if args.only and extra not in args.only:
            continue
        # Within the other lock as it is on disk (just written when both are regenerated).
        within = (DOCKER / LOCKS[WITHIN[extra]]).read_text() if extra in WITHIN else None
        pins = resolve(requirements, torch, PYTHON_VERSIONS[0], constraints=within)
        text = render(extra, image, torch, pins)
        path = DOCKER / filename
        problems = check_newer_pythons(requirements, torch, text)
        if problems:
            raise SystemExit(f"{filename}: " + "; ".join(problems))
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python docker/lock_requirements.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
