"""The frame of a benchmark that runs several methods side by side over seeds.

Methods run in rotated order per seed (a, b, c; then b, c, a; ...) so that machine noise
spreads over all of them, and the results file is rewritten after every run, so an
interrupted run keeps what it measured (`"complete": false` until the last one).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import machine_info, trl_python, trl_versions, versions

TRL = "trl"


def chosen_methods(methods: str) -> list[str]:
    """The comma-separated --methods; trl's only with its venv (setup_trl_venv.sh)."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if TRL in names and not trl_python().exists():
        sys.exit(f"{trl_python()} is missing: run benchmarks/setup_trl_venv.sh first")
    return names


def header(names: list[str], model_dir: Path, **figures: Any) -> dict[str, Any]:
    """The results document before any run: command, machine, versions, `figures`."""
    return {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_info(),
        "versions": versions(["torch", "diffusers", "peft"]),
        **({"trl_venv": trl_versions()} if TRL in names else {}),
        "pipeline": str(model_dir),
        **figures,
        "runs": {n: [] for n in names},
        "complete": False,
    }


def rotated(names: list[str], first_seed: int, seeds: int) -> Iterator[tuple[int, str]]:
    """(seed, method) in the order they run."""
    for i, seed in enumerate(range(first_seed, first_seed + seeds)):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            yield seed, name


def record(doc: dict[str, Any], path: Path, name: str | None = None, result=None) -> None:
    """Add `result` to `name`'s runs (if given) and rewrite the results file."""
    if name is not None:
        doc["runs"][name].append(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def finish(doc: dict[str, Any], path: Path, report: Callable[[dict], None], work: Path) -> None:
    """Mark the document complete, write it, print its report, remove the work folder."""
    doc["complete"] = True
    record(doc, path)
    report(doc)
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)
