"""tools/train_tiny_flow.py --init: the second leg of the built-in flow model's training
(docs/tiny-model.md) continues from the first leg's weights, not from a new random init."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOOL = Path(__file__).resolve().parents[1] / "tools" / "train_tiny_flow.py"


def train(out: Path, seed: int, *extra: str) -> None:
    cmd = [sys.executable, str(TOOL), "--out", str(out), "--seed", str(seed)]
    cmd += ["--minutes", "0.02", "--per-prompt", "1", "--batch", "4", "--freeze-t5", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def params(path: Path, cls) -> list:
    return [p.detach() for p in cls.from_pretrained(path).parameters()]


def test_a_warm_restart_starts_from_the_saved_transformer_and_t5(tmp_path: Path) -> None:
    from transformers import T5EncoderModel

    first, second = tmp_path / "first", tmp_path / "second"
    train(first, 0)
    train(second, 1, "--init", str(first))  # another seed: a fresh init would differ
    transformer = diffusers.FluxTransformer2DModel
    moved = max(
        float((a - b).abs().max())
        for a, b in zip(
            params(first / "transformer", transformer),
            params(second / "transformer", transformer),
            strict=True,
        )
    )
    assert moved < 1e-2, moved  # a few small steps from the first leg's weights
    t5_first, t5_second = (params(p / "text_encoder_2", T5EncoderModel) for p in (first, second))
    assert all(torch.equal(a, b) for a, b in zip(t5_first, t5_second, strict=True))
