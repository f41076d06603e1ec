"""The rule-based judge reads shape, colour and background off drawings, and after the VAE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared import rule_judge, shapes

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny-sd"


def drawings(seed: int, repeats: int) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    rng = np.random.default_rng(seed)
    triples = shapes.all_triples() * repeats
    return np.stack([shapes.draw(*t, rng) for t in triples]), triples


def test_every_attribute_of_fresh_drawings() -> None:
    images, triples = drawings(7, 4)
    assert [rule_judge.judge(im) for im in images] == triples


def test_vae_round_trips_are_judged_right() -> None:
    """The model's own images pass through this VAE, whose soft edges move the box fill."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL.from_pretrained(MODEL_DIR / "vae", dtype=torch.float32)
    images, triples = drawings(11, 2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    right = rule_judge.matches(rec, [shapes.prompt_for(*t) for t in triples])
    assert right.mean() >= 0.95, right.mean()


def test_a_wrong_prompt_or_an_empty_image_is_not_a_match() -> None:
    images, triples = drawings(3, 1)
    swapped = [
        shapes.prompt_for("square" if t[0] == "circle" else "circle", *t[1:]) for t in triples
    ]
    assert not rule_judge.matches(images, swapped).any()
    blank = np.full((1, 64, 64, 3), 128, dtype=np.uint8)
    assert not rule_judge.matches(blank, ["a red circle on a gray background"]).any()
    assert not rule_judge.matches(images[:1], ["a photo of a cat"]).any()
