"""Image codecs for the protocol: uint8 arrays <-> base64 PNG, with guards."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image

from shared.protocol import MAX_PIXELS_PER_IMAGE, ImagePayload


class ImageDecodeError(ValueError):
    """The payload is not a usable image; the message says why."""


def encode_png(image: np.ndarray, compress_level: int = 1) -> ImagePayload:
    """Encode an HxWx3 uint8 array. Level 1: PNG is lossless at every level, 1 is fastest."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return ImagePayload(format="png", data=base64.b64encode(buf.getvalue()).decode("ascii"))


def decode_image(payload: ImagePayload, max_pixels: int = MAX_PIXELS_PER_IMAGE) -> Image.Image:
    """Decode to an RGB PIL image, refusing bad base64, non-images and decompression bombs."""
    try:
        raw = base64.b64decode(payload.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"image data is not valid base64: {exc}") from exc
    try:
        img = Image.open(io.BytesIO(raw))
    except Exception as exc:
        raise ImageDecodeError("image data is not a readable image") from exc
    if img.format != "PNG":
        raise ImageDecodeError(f"image format {img.format!r} does not match declared 'png'")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height} pixels, more than the limit {max_pixels}"
        )
    try:
        img.load()
    except Exception as exc:
        raise ImageDecodeError(f"image is truncated or corrupt: {exc}") from exc
    return img.convert("RGB")
