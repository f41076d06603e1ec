"""Image codecs for the protocol: uint8 arrays <-> base64 PNG, with guards."""

from __future__ import annotations

import base64
import binascii
import io
import struct
import zlib

import numpy as np
from PIL import Image

from shared.protocol import MAX_PIXELS_PER_IMAGE, ImagePayload


class ImageDecodeError(ValueError):
    """The payload is not a usable image; the message says why."""


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(image: np.ndarray, compress_level: int = 0) -> bytes:
    """A valid, lossless RGB PNG with filter "none" on every row.

    Pillow's adaptive row filtering dominated the transport cost (7-9 ms per 256 px
    image against 0.15 ms for this; docs/benchmarks.md), and the pixels are the same.
    """
    height, width, _ = image.shape
    rows = np.zeros((height, width * 3 + 1), dtype=np.uint8)  # leading 0 = filter none
    rows[:, 1:] = image.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level))
        + _png_chunk(b"IEND", b"")
    )


def encode_png(image: np.ndarray, compress_level: int = 0) -> ImagePayload:
    """Encode an HxWx3 uint8 array as base64 PNG (lossless at every level).

    Level 0 (stored deflate) by default: measured 0.4 ms per 256 px image against
    4.3 ms at level 1, for 3% more bytes on noisy images; raise it for slow links.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {image.dtype} {image.shape}")
    data = png_bytes(np.ascontiguousarray(image), compress_level)
    return ImagePayload(format="png", data=base64.b64encode(data).decode("ascii"))


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
