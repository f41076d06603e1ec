"""Prompt fidelity: does the image show the shape, colour and background its prompt names?

A ~0.2M-parameter three-head CNN trained on procedurally drawn shapes (shared.shapes). It is
the built-in reward for the tiny embedded model, so the demo has a reward that measures
prompt following rather than taste. Pure torch: the reward server never imports diffusers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from reward_server.scorers.base import Scorer, ScorerUnavailable
from shared import shapes

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "models" / "prompt-fidelity"
HEADS = ("shape", "colour", "background")


class ShapeNet(nn.Module):
    """Four conv stages and global pooling, then one linear head per attribute."""

    def __init__(self, widths: tuple[int, ...], n_classes: tuple[int, int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in widths:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(c_in, n) for n in n_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (N,3,H,W) in [-1, 1]; returns logits per head."""
        h = self.features(x).mean(dim=(2, 3))
        return [head(h) for head in self.heads]


def default_config() -> dict[str, Any]:
    return {
        "image_size": 64,
        "widths": [24, 48, 96, 128],
        "shapes": list(shapes.SHAPES),
        "colours": list(shapes.COLOURS),
        "backgrounds": list(shapes.BACKGROUNDS),
    }


def build_net(config: dict[str, Any]) -> ShapeNet:
    n = (len(config["shapes"]), len(config["colours"]), len(config["backgrounds"]))
    return ShapeNet(tuple(config["widths"]), n)


def to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """PIL images of any size -> (N,3,size,size) float in [-1, 1]."""
    arrs = []
    for img in images:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arrs.append(np.asarray(img, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


class PromptFidelityScorer(Scorer):
    """Score = P(shape) * P(colour) * P(background) of the attributes the prompt names.

    "a circle" is judged on its shape alone, so the scorer can keep a taste-driven run
    (the human demo's shape-only prompts) true to the shape it was asked for.

    A product, not a mean, so an image is only rewarded near 1 when all three attributes
    are right; one wrong attribute pulls the score towards 0.
    """

    name = "prompt_fidelity"
    version = "1"
    description = "Classifier probability that a tiny-shapes image shows its prompt's attributes"
    max_batch_size = 256

    def __init__(self, net: ShapeNet, config: dict[str, Any]) -> None:
        self.net = net.eval()
        self.config = config
        self.labels = (config["shapes"], config["colours"], config["backgrounds"])

    @torch.no_grad()
    def predict(self, images: list[Image.Image]) -> list[torch.Tensor]:
        """Per-head class probabilities, (N, classes) each."""
        x = to_tensor(images, int(self.config["image_size"]))
        return [logits.softmax(-1) for logits in self.net(x)]

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        probs = self.predict(images) if images else []
        scores: list[float] = []
        details: list[dict[str, Any]] = []
        for i, prompt in enumerate(prompts):
            predicted = {h: self.labels[k][int(probs[k][i].argmax())] for k, h in enumerate(HEADS)}
            wanted = shapes.parse_named(prompt)
            if wanted is None:
                scores.append(0.0)
                details.append({"error": "prompt not understood", "predicted": predicted})
                continue
            named = [(k, h) for k, h in enumerate(HEADS) if wanted[k] is not None]
            per_head = {h: float(probs[k][i, self.labels[k].index(wanted[k])]) for k, h in named}
            scores.append(float(np.prod(list(per_head.values()))))
            details.append(
                {
                    "predicted": predicted,
                    "probabilities": per_head,
                    "match": all(predicted[h] == wanted[k] for k, h in named),
                }
            )
        return scores, details


def load(model_dir: Path) -> PromptFidelityScorer:
    """Load config.json + model.safetensors from a directory."""
    from safetensors.torch import load_file

    weights, cfg = model_dir / "model.safetensors", model_dir / "config.json"
    if not weights.is_file() or not cfg.is_file():
        raise ScorerUnavailable(f"prompt_fidelity weights not found in {model_dir}")
    config = json.loads(cfg.read_text())
    net = build_net(config)
    net.load_state_dict(load_file(str(weights)))
    return PromptFidelityScorer(net, config)


def build(settings: Any = None) -> Scorer:
    """settings.models_dir (if set) is the models root holding prompt-fidelity/, or that dir."""
    root = getattr(settings, "models_dir", None)
    if root is None:
        return load(DEFAULT_DIR)
    root = Path(root)
    if not root.is_dir():  # e.g. the relative default "models" from another directory
        return load(DEFAULT_DIR)
    return load(root if (root / "model.safetensors").is_file() else root / "prompt-fidelity")
