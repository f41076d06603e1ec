"""requires-python admits only Pythons whose standard library has what the project imports.

pyproject once said >=3.10 while the trainer imported tomllib (3.11+): pip then
installed it on 3.10 and `ddpo train` died on import. The scan below finds every
use of a standard-library module or name newer than 3.8 (`import tomllib`,
`from datetime import UTC`, `asyncio.timeout(...)`) and checks the declared
minimum, ruff's target, the README and the Docker images against it.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "venv", "models", "build", "dist", "node_modules"}

#: Standard-library modules added after 3.8, with the version that added them.
NEW_MODULES: dict[str, tuple[int, int]] = {
    "zoneinfo": (3, 9),
    "graphlib": (3, 9),
    "tomllib": (3, 11),
    "wsgiref.types": (3, 11),
}

#: Names added to existing standard-library modules after 3.8.
NEW_NAMES: dict[tuple[str, str], tuple[int, int]] = {
    ("typing", "Annotated"): (3, 9),
    ("typing", "ParamSpec"): (3, 10),
    ("typing", "TypeAlias"): (3, 10),
    ("typing", "TypeGuard"): (3, 10),
    ("typing", "Concatenate"): (3, 10),
    ("itertools", "pairwise"): (3, 10),
    ("datetime", "UTC"): (3, 11),
    ("enum", "StrEnum"): (3, 11),
    ("typing", "Self"): (3, 11),
    ("typing", "LiteralString"): (3, 11),
    ("typing", "Never"): (3, 11),
    ("typing", "assert_never"): (3, 11),
    ("typing", "reveal_type"): (3, 11),
    ("asyncio", "TaskGroup"): (3, 11),
    ("asyncio", "timeout"): (3, 11),
    ("contextlib", "chdir"): (3, 11),
    ("hashlib", "file_digest"): (3, 11),
    ("typing", "override"): (3, 12),
    ("itertools", "batched"): (3, 12),
    ("typing", "TypeIs"): (3, 13),
    ("warnings", "deprecated"): (3, 13),
    ("copy", "replace"): (3, 13),
}


def project_sources() -> list[Path]:
    """Every .py file of the project, without walking into the venv or other hidden dirs."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return found


def stdlib_needs(path: Path) -> dict[str, tuple[int, int]]:
    """What in `path` needs a newer standard library: 'tomllib' or 'datetime.UTC' -> version.

    Lazy imports inside functions count too (they fail just as surely, only later).
    """
    needs: dict[str, tuple[int, int]] = {}
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in NEW_MODULES:
                    needs[alias.name] = NEW_MODULES[alias.name]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in NEW_MODULES:
                needs[node.module] = NEW_MODULES[node.module]
            for alias in node.names:
                if (node.module, alias.name) in NEW_NAMES:
                    needs[f"{node.module}.{alias.name}"] = NEW_NAMES[(node.module, alias.name)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            key = (node.value.id, node.attr)  # `asyncio.timeout(...)` after `import asyncio`
            if key in NEW_NAMES:
                needs[".".join(key)] = NEW_NAMES[key]
    return needs


def project_needs() -> dict[str, tuple[tuple[int, int], str]]:
    """Each newer stdlib feature the project uses, with its version and one file using it."""
    found: dict[str, tuple[tuple[int, int], str]] = {}
    for path in project_sources():
        for name, version in stdlib_needs(path).items():
            found.setdefault(name, (version, str(path.relative_to(ROOT))))
    return found


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def lowest_admitted(spec: SpecifierSet) -> tuple[int, int]:
    """The oldest 3.x that `spec` lets pip install on (whatever operators it uses)."""
    for minor in range(0, 40):
        if any(spec.contains(f"3.{minor}.{patch}") for patch in range(0, 30)):
            return (3, minor)
    raise AssertionError(f"requires-python {spec} admits no Python 3")


def requires_python() -> SpecifierSet:
    return SpecifierSet(pyproject()["project"]["requires-python"])


def test_scan_sees_the_imports_that_matter() -> None:
    """Guards the scan itself: it must find tomllib where the trainer reads its config."""
    assert stdlib_needs(ROOT / "trainer" / "config.py").get("tomllib") == (3, 11)
    assert "tomllib" in project_needs()


def test_lowest_admitted_reads_any_specifier() -> None:
    assert lowest_admitted(SpecifierSet(">=3.10")) == (3, 10)
    assert lowest_admitted(SpecifierSet(">3.10,<4")) == (3, 10)  # 3.10.1 is above 3.10
    assert lowest_admitted(SpecifierSet("~=3.11.2")) == (3, 11)
    assert lowest_admitted(SpecifierSet(">=3.12,!=3.12.*")) == (3, 13)


def test_requires_python_admits_no_python_lacking_what_the_project_imports() -> None:
    lowest = lowest_admitted(requires_python())
    too_new = {
        name: f"{version[0]}.{version[1]}+ (e.g. {where})"
        for name, (version, where) in project_needs().items()
        if version > lowest
    }
    assert not too_new, f"requires-python admits {lowest[0]}.{lowest[1]}, but the project uses"


def test_ruff_targets_the_oldest_admitted_python() -> None:
    """ruff sorts imports by its stdlib list for that target (tomllib read as third-party on
    py310) and only suggests syntax that target has."""
    major, minor = lowest_admitted(requires_python())
    assert pyproject()["tool"]["ruff"]["target-version"] == f"py{major}{minor}"


def test_readme_states_the_same_python() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = {tuple(map(int, m)) for m in re.findall(r"Python (\d+)\.(\d+)\+", text)}
    assert stated == {lowest_admitted(requires_python())}, stated


def test_docker_images_python_is_admitted() -> None:
    """The locks serve a range of base-image Pythons, from requires-python's lowest on."""
    text = (ROOT / "docker" / "lock_requirements.py").read_text(encoding="utf-8")
    match = re.search(r"^PYTHON_VERSIONS = \(([^)]*)\)", text, re.MULTILINE)
    assert match, "docker/lock_requirements.py no longer names PYTHON_VERSIONS"
    versions = re.findall(r'"(\d+)\.(\d+)"', match.group(1))
    assert versions[0] == tuple(map(str, lowest_admitted(requires_python()))), versions
    for major, minor in versions:
        assert requires_python().contains(f"{major}.{minor}.0"), (major, minor)
    checked = ", ".join(".".join(v) for v in versions[1:])
    for lock in ("requirements-trainer.txt", "requirements-server.txt", "requirements-ray.txt"):
        header = (ROOT / "docker" / lock).read_text(encoding="utf-8").splitlines()[0]
        assert f"resolved for Python {'.'.join(versions[0])} " in header, (lock, header)
        assert f"checked to install on {checked};" in header, (lock, header)


def test_this_interpreter_is_admitted() -> None:
    assert requires_python().contains(".".join(map(str, sys.version_info[:3])))
