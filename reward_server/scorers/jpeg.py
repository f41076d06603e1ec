"""JPEG (in)compressibility: the file size of the image saved as JPEG at quality 95.

The two rewards of the DDPO paper that need no weights: incompressibility is
the size in kB (1 kB = 1000 bytes), compressibility its negation.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from reward_server.scorers.base import Scorer

JPEG_QUALITY = 95


def jpeg_size_kb(image: Image.Image, quality: int = JPEG_QUALITY) -> float:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


class JpegIncompressibility(Scorer):
    name = "jpeg_incompressibility"
    version = "1"
    description = "JPEG size in kB at quality 95: rewards detail and noise."
    max_batch_size = 64

    sign = 1.0

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        return [self.sign * jpeg_size_kb(img) for img in images], None


class JpegCompressibility(JpegIncompressibility):
    name = "jpeg_compressibility"
    description = "Negated JPEG size in kB at quality 95: rewards flat, simple images."
    sign = -1.0
