"""Helpers for tests (here and in the trainer's integration tests): fakes and tiny weights.

`write_tiny_aesthetic_weights` saves a randomly initialised CLIP vision model
with the real projection width (768) and a LAION-shaped head, so the real
loading code runs end to end on a CPU in about a second, with no download.
`write_tiny_clip` saves a smaller one for fitting reward heads: even random,
its embeddings of the procedural shapes carry their colour.
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


def write_tiny_clip(
    directory: Path, image_size: int = 32, projection_dim: int = 64, seed: int = 0
) -> Path:
    """Save a random CLIP vision model (with projection) as `directory`/tiny-clip-<dim>; return it.

    Measured on 300 shapes.draw images: a linear probe on its normalised
    embeddings predicts "is red" with held-out r = 0.78 (image_size 32) and
    0.89 (64), for two init seeds each; embedding them takes well under a
    second on one CPU thread.
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        projection_dim=projection_dim,
    )
    clip_dir = directory / f"tiny-clip-{projection_dim}"
    CLIPVisionModelWithProjection(config).save_pretrained(clip_dir)
    return clip_dir


def rate_shapes(
    store: Any,
    n: int,
    prefers: str = "red",
    mode: Literal["score", "pair"] = "score",
    seed: int = 0,
    noise: float = 1.0,
    flip: float = 0.1,
    size: int = 64,
) -> None:
    """Queue `n` procedural shape drawings (pair mode: `n` A/B pairs) and rate them all
    through the store's real API, as raters who like one colour would.

    Score mode: each image gets one 1-10 rating, about 8 for the preferred colour
    and 3 for the others, plus Gaussian noise of `noise` points. Pair mode: each
    pair shows a preferred-colour drawing against another colour under a shared
    prompt; the raters pick the preferred one, except a `flip` share of the time.
    """
    import numpy as np

    from reward_server.storage import NewItem
    from shared.images import png_bytes
    from shared.shapes import BACKGROUNDS, COLOURS, SHAPES, draw, prompt_for

    rng = np.random.default_rng(seed)
    others = [c for c in COLOURS if c != prefers]

    def drawing(colour: str) -> tuple[bytes, str]:
        shape, background = str(rng.choice(SHAPES)), str(rng.choice(BACKGROUNDS))
        return png_bytes(draw(shape, colour, background, rng, size)), prompt_for(
            shape, colour, background
        )

    items = []
    colour_of: dict[bytes, str] = {}
    for i in range(n):
        if mode == "score":
            colour = prefers if rng.random() < 0.4 else str(rng.choice(others))
            png, prompt = drawing(colour)
            colour_of[png] = colour
            items.append(NewItem(f"s{i}", prompt, png, {"colour": colour}))
        else:
            for colour in (prefers, str(rng.choice(others))):
                png, _ = drawing(colour)
                colour_of[png] = colour
                items.append(NewItem(f"p{i}-{colour}", f"pair {i}", png, {"colour": colour}))
    store.create_job("human" if mode == "score" else "human_pairwise", mode, 1, items, 3600)
    raters = [store.add_rater(f"{prefers}-fan-{seed}-{k}")[0] for k in range(2)]
    for k in range(n):
        rater = raters[k % 2]
        task = store.claim(rater, 60, mode)
        assert task is not None, "the queue ran dry before every item was rated"
        colours = [colour_of[store.image_for(rater, it.item_id)] for it in task.items]
        if mode == "score":
            base = 8.0 if colours[0] == prefers else 3.0
            score = int(np.clip(round(base + rng.normal(0.0, noise)), 1, 10))
            store.submit(rater, task.lease_token, score=score)
        else:
            pick = 0 if colours[0] == prefers else 1
            if rng.random() < flip:
                pick = 1 - pick
            store.submit(rater, task.lease_token, choice="ab"[pick])
