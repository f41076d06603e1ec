"""The PNG codec both sides use: lossless round trip and its guards."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from shared.images import ImageDecodeError, decode_image, encode_png
from shared.protocol import ImagePayload


def test_round_trip_is_lossless() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(decode_image(encode_png(arr))), arr)


def test_encode_rejects_wrong_arrays() -> None:
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))


def test_decode_guards() -> None:
    with pytest.raises(ImageDecodeError, match="base64"):
        decode_image(ImagePayload(data="***"))
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_image(ImagePayload(data=base64.b64encode(b"text").decode()))
    big = encode_png(np.zeros((40, 40, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="more than the limit"):
        decode_image(big, max_pixels=1000)
    raw = base64.b64decode(big.data)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), np.uint8)).save(
        buf, format="PNG"
    )
    cut = base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(ImagePayload(data=cut))
    assert raw.startswith(b"\x89PNG")


def test_fast_png_is_lossless_and_readable_by_pillow():
    import io

    import numpy as np
    from PIL import Image

    from shared.images import png_bytes

    rng = np.random.default_rng(1)
    for shape in ((1, 1, 3), (7, 13, 3), (64, 64, 3)):
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        for level in (0, 1, 9):
            decoded = Image.open(io.BytesIO(png_bytes(img, level)))
            assert decoded.format == "PNG" and decoded.mode == "RGB"
            assert (np.asarray(decoded) == img).all()
