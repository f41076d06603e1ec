"""`pickscore`: PickScore_v1 (Kirstain et al. 2023), a CLIP-H fine-tuned on Pick-a-Pic preferences.

The score is the model's own: exp(logit_scale) times the cosine of the prompt's
and the image's CLIP embeddings, with the logit scale read from the weights.
Flow-GRPO trains on it divided by 26 (to bring it near 1); a trainer gets the
same with the endpoint's weight, 1/26. The model repo ships no processor: the tokenizer and
preprocessor config come from the LAION CLIP-ViT-H-14 repo it was fine-tuned
from (`DDPO_PICKSCORE_PROCESSOR`). Nothing is downloaded unless allowed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from reward_server.clip_embedding import resolve_clip_spec
from reward_server.clip_preprocess import CONFIG_FILES
from reward_server.clip_text_image import ClipTextImage
from reward_server.scorers.base import Scorer
from reward_server.settings import ServerSettings

log = logging.getLogger(__name__)


class PickScoreScorer(Scorer):
    name = "pickscore"
    description = (
        "PickScore_v1: exp(logit_scale) x cosine of CLIP-H text and image embeddings, "
        "trained on human preferences (Pick-a-Pic); higher is preferred (below ~26)."
    )

    def __init__(self, clip: ClipTextImage, version: str = "1", max_batch_size: int = 16) -> None:
        self.clip = clip
        self.version = version
        self.max_batch_size = max_batch_size

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        scores = self.clip.logit_scale * self.clip.cosines(images, prompts)
        return scores.tolist(), None


def build(settings: ServerSettings) -> PickScoreScorer:
    model = resolve_clip_spec(settings.pickscore_model, settings.models_dir)
    processor = resolve_clip_spec(
        settings.pickscore_processor, settings.models_dir, markers=CONFIG_FILES
    )
    device = settings.resolve_device()
    clip = ClipTextImage.load(
        model, processor, allow_download=settings.allow_download, device=device
    )
    log.info("pickscore: %s on %s, logit scale %.2f", model, device, clip.logit_scale)
    return PickScoreScorer(
        clip, version=Path(model).name, max_batch_size=32 if device == "cuda" else 8
    )
