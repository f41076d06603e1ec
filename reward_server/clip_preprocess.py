"""CLIP image preprocessing as the checkpoint itself specifies it.

A CLIP checkpoint ships its image processor config (resize, crop, mean, std:
OpenAI CLIP and LAION's OpenCLIP models differ in more than their weights), and
a scorer must feed its model the pixels the model was trained on. So the
transform is transformers' own CLIP image processor, and transformers' loader
finds its config: `preprocessor_config.json` (hub repos, transformers 4) or
the `image_processor` entry of `processor_config.json` (what
`CLIPProcessor.save_pretrained` writes in transformers 5). The PIL backend is
used even where torchvision is installed: it is what transformers 4 always ran
(PickScore, torchmetrics' CLIPScore and the LAION aesthetic predictor were all
measured with it), and it keeps torchvision out of the server. A directory
holding neither file falls back, with a warning that says so, to the OpenAI
CLIP defaults at the model's image size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from reward_server.scorers.base import ScorerUnavailable

log = logging.getLogger(__name__)

#: Where transformers looks for an image processor config (its IMAGE_PROCESSOR_NAME and
#: PROCESSOR_NAME); named here only to tell "none shipped" from "shipped but unreadable".
CONFIG_FILES = ("preprocessor_config.json", "processor_config.json")


def has_image_processor_config(directory: Path) -> bool:
    """True when `directory` holds a file transformers may read an image processor from."""
    return any((directory / name).is_file() for name in CONFIG_FILES)


class ClipUnavailable(ScorerUnavailable):
    """The CLIP model is not at hand (not cached, not a directory, incomplete weights)."""


def _processor_class() -> Any:
    """CLIPImageProcessorPil (transformers 5) or CLIPImageProcessor (4: PIL and numpy)."""
    try:
        import transformers
    except ImportError as exc:
        raise ClipUnavailable(f"transformers is not installed: {exc}") from exc
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def _crop_side(processor: Any) -> int:
    crop = processor.crop_size
    get = crop.get if isinstance(crop, dict) else lambda key: getattr(crop, key, None)
    height, width = get("height"), get("width")
    if height is None or height != width:
        raise ClipUnavailable(f"expected a square CLIP center crop, got {crop!r}")
    return int(height)


class ClipPreprocess:
    """Images -> (N, 3, S, S) pixel values, with the given CLIP image processor.

    `ClipPreprocess(size)` is the OpenAI CLIP transform at that size (what a
    checkpoint without a preprocessor config gets); `load_clip_preprocess`
    reads a checkpoint's own. `source` says which, for logs and descriptions.
    """

    def __init__(
        self, size: int = 224, processor: Any | None = None, source: str | None = None
    ) -> None:
        if processor is None:
            processor = _processor_class()(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            )
            source = source or f"OpenAI CLIP defaults at {size} px"
        self.processor = processor
        self.size = _crop_side(processor)
        self.source = source or "a given image processor"
        self.mean = tuple(float(v) for v in processor.image_mean)
        self.std = tuple(float(v) for v in processor.image_std)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        rgb = [img if img.mode == "RGB" else img.convert("RGB") for img in images]
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"]


def load_clip_preprocess(spec: str, image_size: int, allow_download: bool) -> ClipPreprocess:
    """The checkpoint's own preprocessing; OpenAI's at image_size when it ships none.

    spec is a local directory or a hub id (looked up in the cache only, unless
    allow_download). A config whose crop does not match the model's input size
    is refused: the model would either fail or see pixels it never saw in training.
    """
    cls = _processor_class()
    path = Path(spec).expanduser()
    try:
        processor = cls.from_pretrained(spec, local_files_only=not allow_download)
    except OSError as exc:
        if path.is_dir() and not has_image_processor_config(path):
            return _openai_fallback(spec, image_size)
        if path.is_dir():
            raise ClipUnavailable(
                f"cannot read the image processor config in {path}: {exc}"
            ) from exc
        hint = "" if allow_download else " (set DDPO_ALLOW_DOWNLOAD=1 to fetch it)"
        raise ClipUnavailable(
            f"the CLIP preprocessor config of {spec!r} is not at hand{hint}"
        ) from exc
    preprocess = ClipPreprocess(processor=processor, source=f"the image processor config of {spec}")
    if preprocess.size != image_size:
        raise ClipUnavailable(
            f"{spec}: the preprocessor crops to {preprocess.size} px but the model takes "
            f"{image_size} px images"
        )
    return preprocess


def _openai_fallback(spec: str, image_size: int) -> ClipPreprocess:
    log.warning(
        "%s has no image processor config (%s): using the OpenAI CLIP preprocessing at %d px "
        "(mean/std, bicubic resize, center crop); add the checkpoint's own if it was trained "
        "otherwise",
        spec,
        " or ".join(CONFIG_FILES),
        image_size,
    )
    return ClipPreprocess(image_size, source=f"OpenAI CLIP defaults ({spec} has no config)")
