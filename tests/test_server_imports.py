"""The reward server must not import the trainer's stack (diffusers, peft, accelerate)."""

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
