"""The committed tiny text-to-image pipeline loads offline and samples."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny-sd"

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def test_size_budget() -> None:
    total = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert total <= 20 * 1024 * 1024, f"{total / 1e6:.1f} MB"


def test_loads_offline_and_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    torch.set_num_threads(2)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(MODEL_DIR, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    out = pipe(
        ["a red circle on a white background", "a blue square on a black background"],
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    images = out.images
    assert images.shape == (2, 64, 64, 3)
    assert images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0


FLOW_DIR = MODEL_DIR.parent / "tiny-flux"


def test_the_flow_model_loads_offline_shares_the_encoder_and_keeps_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """models/tiny-flux: FluxPipeline as a user loads it, with tiny-sd's frozen CLIP encoder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    total = sum(p.stat().st_size for p in FLOW_DIR.rglob("*") if p.is_file())
    assert total <= 20 * 1024 * 1024, f"{total / 1e6:.1f} MB"
    pipe = diffusers.FluxPipeline.from_pretrained(FLOW_DIR, dtype=torch.float32)
    sd = diffusers.StableDiffusionPipeline.from_pretrained(MODEL_DIR, dtype=torch.float32)
    for a, b in zip(pipe.text_encoder.parameters(), sd.text_encoder.parameters(), strict=True):
        assert torch.equal(a, b)  # the same frozen encoder, as FLUX reuses CLIP
    assert not pipe.transformer.config.guidance_embeds
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        ["a red circle on a white background", "a blue square on a black background"],
        height=64,
        width=64,
        num_inference_steps=4,
        max_sequence_length=pipe.tokenizer_2.model_max_length,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (2, 64, 64, 3)
    assert np.isfinite(images).all() and images.std() > 0.05
