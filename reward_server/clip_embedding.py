"""CLIP image embeddings: preprocessing, model lookup and a batched embedder.

Shared by the aesthetic scorer, the `reward_head` scorer and `ddpo fit-reward`,
so a head is fitted on exactly the embeddings it later scores. A CLIP spec is a
hub id or a local directory; nothing is downloaded unless asked (the servers and
the fitting command usually run offline). `transformers` is imported only when
a model is loaded. No fastapi here: the trainer's CLI imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from reward_server.scorers.base import ScorerUnavailable

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipUnavailable(ScorerUnavailable):
    """The CLIP model is not at hand (not cached, not a directory, incomplete weights)."""


class ClipPreprocess:
    """CLIPImageProcessor's transform in plain PIL + torch (no torchvision needed).

    Resize the shortest side to `size` (bicubic), center-crop `size`x`size`,
    scale to [0, 1], normalise with the CLIP mean and std.
    """

    def __init__(self, size: int = 224) -> None:
        self.size = size
        self.mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def _resize_crop(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(self.size * long / short)
        new_w, new_h = (self.size, new_long) if width <= height else (new_long, self.size)
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        return np.asarray(image, dtype=np.uint8)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        batch = np.stack([self._resize_crop(img) for img in images])
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        return (pixels - self.mean) / self.std


def resolve_clip_spec(spec: str, models_dir: Path | None) -> str:
    """A local directory when there is one (as given, or under models_dir), else the hub id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if models_dir is not None:
        for candidate in (models_dir / spec, models_dir / path.name):
            if (candidate / "config.json").is_file():
                return str(candidate)
    return spec


def load_clip_vision(spec: str, allow_download: bool) -> nn.Module:
    """CLIP vision tower + projection; reads full CLIPModel checkpoints too.

    local_files_only unless allow_download: a missing model is a clear error,
    never a silent multi-gigabyte download.
    """
    try:
        from transformers import CLIPVisionModelWithProjection
    except ImportError as exc:
        raise ClipUnavailable(f"transformers is not installed: {exc}") from exc
    try:
        model, info = CLIPVisionModelWithProjection.from_pretrained(
            spec, local_files_only=not allow_download, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        hint = "" if allow_download else " (set DDPO_ALLOW_DOWNLOAD=1 to fetch it)"
        raise ClipUnavailable(f"CLIP model {spec!r} is not at hand{hint}: {exc}") from exc
    missing = sorted(map(str, info.get("missing_keys") or []))
    missing += sorted(str(k[0]) for k in info.get("mismatched_keys") or [])
    if missing:
        # Randomly initialised layers would score silently wrong: refuse instead.
        raise ClipUnavailable(
            f"CLIP model {spec!r} lacks or mis-shapes {len(missing)} vision weights, "
            f"e.g. {missing[:3]}"
        )
    return model


#: progress(done, total), called after each embedded batch.
Progress = Callable[[int, int], None]


class ClipEmbedder:
    """L2-normalised CLIP image embeddings (`image_embeds`), in batches, without autograd."""

    def __init__(
        self,
        vision: nn.Module,
        spec: str = "",
        device: str = "cpu",
        batch_size: int = 32,
        preprocess: ClipPreprocess | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.vision = vision.eval().requires_grad_(False).to(self.device)
        self.spec = spec
        self.batch_size = batch_size
        config = vision.config
        self.embed_dim: int = int(config.projection_dim)
        self.preprocess = preprocess or ClipPreprocess(int(config.image_size))

    @classmethod
    def load(
        cls, spec: str, *, allow_download: bool = False, device: str = "cpu", batch_size: int = 32
    ) -> ClipEmbedder:
        return cls(load_clip_vision(spec, allow_download), spec, device, batch_size)

    def embed_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """One forward pass; the caller keeps the batch small enough for the device."""
        with torch.inference_mode():
            pixels = self.preprocess(images).to(self.device)
            embeds = self.vision(pixel_values=pixels).image_embeds.float()
            return embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)

    def embed(
        self, images: Sequence[Image.Image], progress: Progress | None = None
    ) -> torch.Tensor:
        """(N, embed_dim) float32 on the embedder's device, in `batch_size` chunks."""
        if not images:
            return torch.empty(0, self.embed_dim, device=self.device)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            chunks.append(self.embed_batch(images[start : start + self.batch_size]))
            if progress is not None:
                progress(min(start + self.batch_size, len(images)), len(images))
        return torch.cat(chunks)
