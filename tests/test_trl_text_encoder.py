"""benchmarks/trl_ddpo_epoch.load_text_encoder: trl's venv (transformers 4.x) names CLIP's
weights `text_model.*`, ours (5.x) saves them without it, and 4.x silently kept a random
encoder; the loader must map the names, load every tensor and refuse what does not fit."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from trl_ddpo_epoch import load_text_encoder  # noqa: E402


class Encoder4x(torch.nn.Module):
    """transformers 4.x layout: the weights sit under `text_model`."""

    def __init__(self) -> None:
        super().__init__()
        self.text_model = torch.nn.Linear(3, 2)


def saved(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    (tmp_path / "text_encoder").mkdir()
    save_file(state, str(tmp_path / "text_encoder" / "model.safetensors"))
    return tmp_path


def test_weights_saved_without_the_prefix_are_loaded_under_it(tmp_path):
    weights = {"weight": torch.randn(2, 3), "bias": torch.randn(2)}
    encoder = Encoder4x()
    pipeline = SimpleNamespace(sd_pipeline=SimpleNamespace(text_encoder=encoder))
    assert load_text_encoder(pipeline, saved(tmp_path, weights)) == 2
    assert torch.equal(encoder.text_model.weight, weights["weight"])
    assert torch.equal(encoder.text_model.bias, weights["bias"])


def test_a_checkpoint_that_does_not_fit_fails(tmp_path):
    pipeline = SimpleNamespace(sd_pipeline=SimpleNamespace(text_encoder=Encoder4x()))
    with pytest.raises(RuntimeError, match="missing"):
        load_text_encoder(pipeline, saved(tmp_path, {"weight": torch.randn(2, 3)}))
