"""Helpers for tests (here and in the trainer's integration tests): fakes and tiny weights.

`write_tiny_aesthetic_weights` saves a randomly initialised CLIP vision model
with the real projection width (768) and a LAION-shaped head, so the real
loading code runs end to end on a CPU in about a second, with no download.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from reward_server.scorers.base import Scorer


class RecordingScorer(Scorer):
    """Scores the top-left pixel's red value / 255; records every batch it was handed."""

    name = "recording"
    version = "test"
    description = "Red value of the top-left pixel, for tests."

    def __init__(self, max_batch_size: int = 8, delay_s: float = 0.0) -> None:
        self.max_batch_size = max_batch_size
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        with self._lock:
            self.batch_sizes.append(len(images))
            self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        scores = [img.getpixel((0, 0))[0] / 255.0 for img in images]
        return scores, [{"prompt": p} for p in prompts]


def write_tiny_aesthetic_weights(
    directory: Path,
    image_size: int = 32,
    head_format: Literal["laion", "trl", "safetensors"] = "laion",
    full_clip: bool = False,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Save a tiny CLIP (vision-only, or a full CLIPModel) and a random head; return both paths."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from reward_server.scorers.aesthetic import EMBED_DIM, AestheticHead

    torch.manual_seed(seed)
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        projection_dim=EMBED_DIM,
    )
    clip_dir = directory / ("tiny-clip-full" if full_clip else "tiny-clip")
    if full_clip:
        text = CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            vocab_size=99,
            max_position_embeddings=16,
            projection_dim=EMBED_DIM,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        config = CLIPConfig(
            text_config=text.to_dict(),
            vision_config=CLIPVisionConfig(**vision).to_dict(),
            projection_dim=EMBED_DIM,
        )
        CLIPModel(config).save_pretrained(clip_dir)
    else:
        CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).save_pretrained(clip_dir)

    torch.manual_seed(seed)  # the head alone decides the seed's weights, whatever CLIP drew
    state = AestheticHead().state_dict()
    if head_format == "trl":
        head_path = directory / "aesthetic-model.pth"
        torch.save({f"mlp.{k}": v for k, v in state.items()}, head_path)
    elif head_format == "safetensors":
        from safetensors.torch import save_file

        head_path = directory / "aesthetic-head.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(head_path))
    else:
        head_path = directory / "sac+logos+ava1-l14-linearMSE.pth"
        torch.save(state, head_path)
    return clip_dir, head_path
