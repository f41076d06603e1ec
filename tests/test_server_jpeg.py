"""JPEG (in)compressibility as in DDPO: JPEG size in kB at quality 95."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from reward_server.scorers.jpeg import JpegCompressibility, JpegIncompressibility


def _jpeg_kb(img: Image.Image) -> float:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return len(buf.getvalue()) / 1000


def test_sizes_and_signs() -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    flat = Image.new("RGB", (64, 64), (120, 30, 200))
    inc, _ = JpegIncompressibility().score([noise, flat], ["", ""])
    comp, details = JpegCompressibility().score([noise, flat], ["", ""])
    assert inc == [_jpeg_kb(noise), _jpeg_kb(flat)]
    assert comp == [-v for v in inc]
    assert inc[0] > inc[1]  # noise is incompressible
    assert comp[1] > comp[0]  # flat is compressible
    assert details is None


def test_names() -> None:
    assert JpegCompressibility.name == "jpeg_compressibility"
    assert JpegIncompressibility.name == "jpeg_incompressibility"
