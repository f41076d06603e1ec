"""Import boundaries: the trainer and the reward server share only `shared/`.

The reward server must not import the trainer's stack (diffusers, peft,
accelerate), the trainer must not import the server, and neither may import
the orchestration package `ddpo/` (the one place that imports both). No
import cycles anywhere, and no module over about a screenful of screens.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("diffusers", "peft", "accelerate")


def imported_modules(path: Path) -> list[str]:
    """Every module a source file imports, lazy imports inside functions included."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


_PROBE = """
import importlib, pkgutil, sys
import reward_server.app, reward_server.serve, reward_server.scorers as pkg
for info in pkgutil.iter_modules(pkg.__path__):
    importlib.import_module(f"reward_server.scorers.{info.name}")
bad = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
print(bad)
"""


def test_server_modules_do_not_import_trainer_stack() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = f"FORBIDDEN = {set(FORBIDDEN)!r}\n" + _PROBE
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_no_source_file_names_them() -> None:
    """Also catch lazy imports inside functions, which the probe above cannot see."""
    offenders = [
        f"{path}: {name}"
        for path in [*ROOT.glob("reward_server/**/*.py"), *ROOT.glob("shared/**/*.py")]
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert offenders == []


#: Server modules the trainer side runs (`ddpo fit-reward`): the trainer image has no web stack.
TRAINER_SIDE = (
    "reward_server/clip_embedding.py",
    "reward_server/head_store.py",
    "reward_server/fitting/options.py",
    "reward_server/fitting/ratings.py",
    "reward_server/fitting/embedding.py",
    "reward_server/fitting/metrics.py",
    "reward_server/fitting/training.py",
    "reward_server/fitting/modes.py",
    "reward_server/fitting/pipeline.py",
    "reward_server/fit_reward.py",
)
WEB_STACK = ("fastapi", "starlette", "uvicorn")


def test_fit_reward_modules_do_not_import_the_web_stack() -> None:
    """Checked on the source (lazy imports too) and in a fresh interpreter."""
    offenders = [
        f"{rel}: {name}"
        for rel in TRAINER_SIDE
        for name in imported_modules(ROOT / rel)
        if name.split(".")[0] in WEB_STACK
    ]
    assert offenders == []
    modules = ", ".join(rel.removesuffix(".py").replace("/", ".") for rel in TRAINER_SIDE)
    probe = (
        f"import sys, {modules}\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(WEB_STACK)!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


# -- the layout as a whole ---------------------------------------------------------------

PACKAGES = ("trainer", "reward_server", "shared", "ddpo")
#: What each side may import of the project's packages.
ALLOWED = {
    "trainer": {"trainer", "shared"},
    "reward_server": {"reward_server", "shared"},
    "shared": {"shared"},
    "ddpo": {"ddpo", "trainer", "reward_server", "shared"},
}
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    return {
        module_name(p): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "migrations" not in p.parts
    }


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules a file imports when it runs (lazy ones too, not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            # `from pkg import submodule` depends on the submodule, not on pkg's __init__
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs or {node.module}
    return found


def test_each_side_imports_only_what_it_may() -> None:
    """trainer/ and reward_server/ never import each other (lazily neither), nor ddpo/."""
    offenders = []
    for path in [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]:
        side = path.relative_to(ROOT).parts[0]
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[side]:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_no_import_cycles() -> None:
    files = project_files()
    graph = {name: runtime_imports(path, set(files)) - {name} for name, path in files.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError(" -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_no_module_is_longer_than_a_reader_can_hold() -> None:
    long = {
        name: n
        for name, path in project_files().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by concern (over {MAX_LINES} lines): {long}"
