"""`clip_score`: text-image CLIP similarity as torchmetrics' CLIPScore defines it.

Per image: 100 x max(cosine of the prompt's and the image's CLIP embeddings, 0)
(Hessel et al. 2021 use w = 2.5 where torchmetrics uses 100; a trainer can
rescale with the endpoint's weight). The model (`DDPO_CLIP_SCORE_MODEL`,
default openai/clip-vit-large-patch14 as in torchmetrics) must ship its
tokenizer and preprocessor config, as hub CLIP repos do. Nothing is
downloaded unless allowed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from reward_server.clip_embedding import resolve_clip_spec
from reward_server.clip_text_image import ClipTextImage
from reward_server.scorers.base import Scorer
from reward_server.settings import ServerSettings

log = logging.getLogger(__name__)


class ClipScoreScorer(Scorer):
    name = "clip_score"
    description = (
        "CLIPScore (torchmetrics): 100 x max(cosine of CLIP text and image embeddings, 0); "
        "higher means the image matches its prompt better (0-100)."
    )

    def __init__(self, clip: ClipTextImage, version: str = "1", max_batch_size: int = 16) -> None:
        self.clip = clip
        self.version = version
        self.max_batch_size = max_batch_size

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        scores = 100.0 * self.clip.cosines(images, prompts).clamp(min=0.0)
        return scores.tolist(), None


def build(settings: ServerSettings) -> ClipScoreScorer:
    model = resolve_clip_spec(settings.clip_score_model, settings.models_dir)
    device = settings.resolve_device()
    clip = ClipTextImage.load(model, model, allow_download=settings.allow_download, device=device)
    log.info("clip_score: %s on %s", model, device)
    return ClipScoreScorer(
        clip, version=Path(model).name, max_batch_size=64 if device == "cuda" else 16
    )
