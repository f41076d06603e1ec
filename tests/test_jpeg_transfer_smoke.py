"""benchmarks/jpeg_transfer.py: its config layering and budget arithmetic, and a quick run.

The full benchmark takes hours on a CPU; a mistake in how it builds our config or
reads the held-out figure would only show at the end. So the pieces are checked
here, and `--quick --sides ours` runs end to end on a random tiny pipeline.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import jpeg_transfer  # noqa: E402


def test_toml_value_round_trips_through_tomllib():
    data = {
        "text": 'a "quoted" \\ path',
        "count": 7,
        "rate": 3e-4,
        "flag": False,
        "names": ["a red circle", "b"],
        "rewards": [{"url": "http://127.0.0.1:1", "scorer": "s", "weight": 0.5}],
    }
    text = "".join(f"{k} = {jpeg_transfer.toml_value(v)}\n" for k, v in data.items())
    assert tomllib.loads(text) == data


def test_recipe_layers_budget_then_preset_then_overrides(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("sample_batch_size = 4\ntrain_learning_rate = 1e-3\nuse_lora = false\n")
    base = jpeg_transfer.budget(6, cpu=False)
    got = jpeg_transfer.recipe(preset, ["train_learning_rate=2e-3"], base)
    ppo = {"train_algorithm": "ppo"}  # as trl's DDPO, under everything else
    assert got == {**ppo, "sample_batch_size": 4, "train_learning_rate": 2e-3, "use_lora": False}
    assert jpeg_transfer.recipe(None, [], base) == {**ppo, "sample_batch_size": 6}
    forced = jpeg_transfer.recipe(None, ['mixed_precision="bf16"'], jpeg_transfer.budget(6, True))
    assert forced == {**ppo, "sample_batch_size": 6, "mixed_precision": "bf16"}  # --set wins
    nft = jpeg_transfer.recipe(None, ['train_algorithm="nft"'], base)
    assert nft["train_algorithm"] == "nft"


def test_budget_layer_is_the_same_for_trl():
    base = jpeg_transfer.budget(6, cpu=True, sample_num_steps=20, train_batch_size=3)
    assert base == {
        "sample_batch_size": 6,
        "mixed_precision": "no",
        "sample_num_steps": 20,
        "train_batch_size": 3,
    }
    args = jpeg_transfer.trl_args(base)
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs == {
        "--mixed-precision": "no",
        "--sample-num-steps": "20",
        "--train-batch-size": "3",
    }
    assert jpeg_transfer.trl_args(jpeg_transfer.budget(6, cpu=False)) == []


def test_preset_may_not_set_what_the_benchmark_fixes(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("seed = 3\n")
    with pytest.raises(SystemExit, match="seed"):
        jpeg_transfer.recipe(preset, [], jpeg_transfer.budget(6, cpu=False))


def test_budget_layout_uses_train_config_defaults():
    # TrainConfig's sample_num_batches_per_epoch default is 2: 6 x 2 = 12 per epoch
    assert jpeg_transfer.layout({"sample_batch_size": 6}, 360) == (12, 30)
    assert jpeg_transfer.layout(
        {"sample_batch_size": 4, "sample_num_batches_per_epoch": 3}, 360
    ) == (
        12,
        30,
    )
    with pytest.raises(SystemExit, match="whole number"):
        jpeg_transfer.layout({"sample_batch_size": 7}, 360)


@pytest.mark.slow
@pytest.mark.timeout(660)
def test_quick_run_ours_end_to_end(tiny_sd, tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "jpeg_transfer.py"), "--quick"]
    cmd += ["--sides", "ours", "--model-dir", str(tiny_sd)]
    cmd += ["--results-dir", str(tmp_path), "--out", "quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "quick.json").read_text())
    assert data["complete"] is True
    budget = data["budget"]
    assert budget["ours_epochs"] == 2
    assert budget["ours_samples_per_epoch"] * budget["ours_epochs"] == budget["samples"]
    (run,) = data["runs"]["ours"]
    assert [e["epoch"] for e in run["epochs"]] == [0, 1]
    for e in run["epochs"]:
        assert math.isfinite(e["reward_mean"]) and e["reward_mean"] < 0  # negated kB
        assert math.isfinite(e["approx_kl"])
    assert run["config"]["sample_num_steps"] == 4 and run["config"]["num_epochs"] == 2
    if not torch.cuda.is_available():
        assert run["config"]["mixed_precision"] == "no"
    assert run["weights"] == "lora"
    # the held-out figure: 3 prompts x 1 seed, paired with the base model's at the same sampler
    assert len(run["after_sizes_kb"]) == 3
    (before,) = data["eval"]["before_kb"].values()
    assert len(before) == 3
    assert run["before_kb"] == pytest.approx(sum(before) / 3)
    assert run["after_kb"] == pytest.approx(sum(run["after_sizes_kb"]) / 3)
    assert run["gain_kb"] == pytest.approx(run["before_kb"] - run["after_kb"])
    assert data["summary"]["ours"]["gain_kb_per_seed"] == [run["gain_kb"]]
    assert "ours: per-epoch training figures" in proc.stdout
    report = subprocess.run(
        [*cmd[:2], "--report", str(tmp_path / "quick.json")], capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr
    assert f"{run['gain_kb']:+.3f}" in report.stdout and "complete: True" in report.stdout
