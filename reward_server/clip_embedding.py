"""CLIP image embeddings: model lookup and a batched embedder.

Shared by the aesthetic scorer, the `reward_head` scorer and `ddpo fit-reward`,
so a head is fitted on exactly the embeddings it later scores. Preprocessing is
the checkpoint's own (reward_server/clip_preprocess.py). A CLIP spec is a
hub id or a local directory; nothing is downloaded unless asked (the servers and
the fitting command usually run offline). `transformers` is imported only when
a model is loaded. No fastapi here: the trainer's CLI imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from reward_server.clip_preprocess import ClipPreprocess, ClipUnavailable, load_clip_preprocess

__all__ = [
    "ClipEmbedder",
    "ClipPreprocess",
    "ClipUnavailable",
    "load_clip_vision",
    "resolve_clip_spec",
]


def resolve_clip_spec(
    spec: str, models_dir: Path | None, markers: Sequence[str] = ("config.json",)
) -> str:
    """A local directory when there is one (as given, or under models_dir), else the hub id.

    Under models_dir a directory counts when it holds one of `markers` (a
    processor-only copy has an image processor config but no config.json).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if models_dir is not None:
        for candidate in (models_dir / spec, models_dir / path.name):
            if any((candidate / marker).is_file() for marker in markers):
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
        """The vision tower and the checkpoint's own preprocessing (see clip_preprocess)."""
        vision = load_clip_vision(spec, allow_download)
        preprocess = load_clip_preprocess(spec, int(vision.config.image_size), allow_download)
        return cls(vision, spec, device, batch_size, preprocess)

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
