"""benchmarks/side_by_side.py: the order methods run in and the results file kept current."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import side_by_side  # noqa: E402


def test_methods_rotate_per_seed_so_noise_spreads_over_all():
    got = list(side_by_side.rotated(["a", "b", "c"], first_seed=5, seeds=3))
    assert got == [
        (5, "a"), (5, "b"), (5, "c"),
        (6, "b"), (6, "c"), (6, "a"),
        (7, "c"), (7, "a"), (7, "b"),
    ]  # fmt: skip


def test_the_file_holds_every_finished_run_and_says_when_all_are(tmp_path):
    doc = side_by_side.header(["a", "b"], tmp_path, target=0.9)
    path = tmp_path / "out" / "r.json"
    side_by_side.record(doc, path, "a", {"seed": 0})
    on_disk = json.loads(path.read_text())
    assert on_disk["runs"] == {"a": [{"seed": 0}], "b": []} and on_disk["complete"] is False
    assert on_disk["target"] == 0.9 and "trl_venv" not in on_disk
    side_by_side.finish(doc, path, lambda d: None, tmp_path / "work")
    assert json.loads(path.read_text())["complete"] is True
