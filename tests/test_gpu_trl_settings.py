"""The trl side of the GPU suite gets the preset's settings, under trl's names, or fails loudly."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from gpu_trl import SHARED_KEYS, trl_settings  # noqa: E402
from trl_ddpo_epoch import with_overrides  # noqa: E402

from trainer.config import load_config  # noqa: E402

PRESET = BENCH.parent / "configs" / "sd15-aesthetic-lora.toml"


def test_trl_gets_the_preset_values_and_the_suite_sizes():
    cfg = load_config(PRESET)
    full = trl_settings(cfg, SimpleNamespace(sd_steps=None, sd_num_batches=None), "bf16", True)
    assert {k: full[k] for k in SHARED_KEYS} == {k: getattr(cfg, k) for k in SHARED_KEYS}
    assert full["mixed_precision"] == "bf16"
    assert (full["sample_num_steps"], full["sample_batch_size"]) == (50, 6)
    smoke = trl_settings(cfg, SimpleNamespace(sd_steps=2, sd_num_batches=1), "bf16", False)
    assert (smoke["sample_num_steps"], smoke["sample_num_batches_per_epoch"]) == (2, 1)
    assert smoke["mixed_precision"] == "no"  # no autocast dtype on the CPU


def test_overrides_parse_json_and_refuse_unknown_keys():
    base = {"sample_num_steps": 20, "mixed_precision": "no", "train_cfg": True}
    out = with_overrides(base, ["sample_num_steps=50", "mixed_precision=bf16", "train_cfg=false"])
    assert out == {"sample_num_steps": 50, "mixed_precision": "bf16", "train_cfg": False}
    assert base["sample_num_steps"] == 20  # the shared defaults are not mutated
    with pytest.raises(SystemExit, match="sample_num_step"):
        with_overrides(base, ["sample_num_step=50"])
