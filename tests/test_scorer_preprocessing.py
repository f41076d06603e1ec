"""CLIP preprocessing comes from the checkpoint's preprocessor_config.json (issue 15 item 4)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reward_server.clip_embedding import ClipEmbedder
from reward_server.clip_preprocess import ClipPreprocess, ClipUnavailable, load_clip_preprocess
from reward_server.scorers import aesthetic
from reward_server.settings import ServerSettings
from tests.helpers.tiny_clip import write_tiny_aesthetic_weights
from tests.helpers.tiny_clip_model import save_tiny_image_processor

#: Not OpenAI's: a checkpoint normalised like this must be fed pixels normalised like this.
MEAN = (0.5, 0.25, 0.75)
STD = (0.2, 0.4, 0.3)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)),
        Image.new("L", (32, 32), 200),  # not RGB: converted
    ]


def _by_hand(images: list[Image.Image], size: int) -> torch.Tensor:
    """Square inputs at `size` need no resize or crop: only rescale and normalise."""
    arr = np.stack([np.asarray(i.convert("RGB").resize((size, size))) for i in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pre")
    bare, head = write_tiny_aesthetic_weights(root / "bare")
    own, _ = write_tiny_aesthetic_weights(root / "own")
    save_tiny_image_processor(own, 32, MEAN, STD)
    return {"bare": bare, "own": own, "head": head}


def test_checkpoint_config_is_used(clip_dirs: dict[str, Path]) -> None:
    pre = load_clip_preprocess(str(clip_dirs["own"]), 32, allow_download=False)
    assert pre.mean == pytest.approx(MEAN) and pre.std == pytest.approx(STD)
    assert "image processor config of" in pre.source
    square = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (0, 90, 255)]
    assert torch.allclose(pre(square), _by_hand(square, 32), atol=1e-5)


def test_missing_config_falls_back_to_openai_clip_with_a_warning(
    clip_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="reward_server.clip_preprocess"):
        pre = load_clip_preprocess(str(clip_dirs["bare"]), 32, allow_download=False)
    assert "has no image processor config" in caplog.text
    assert "OpenAI CLIP defaults" in pre.source
    images = _images()
    assert torch.equal(pre(images), ClipPreprocess(32)(images))


def test_crop_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    save_tiny_image_processor(tmp_path, 48)
    with pytest.raises(ClipUnavailable, match="crops to 48 px but the model takes 32"):
        load_clip_preprocess(str(tmp_path), 32, allow_download=False)


def test_uncached_hub_processor_is_unavailable_not_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ClipUnavailable, match="not at hand.*DDPO_ALLOW_DOWNLOAD"):
        load_clip_preprocess("nobody/no-such-clip", 32, allow_download=False)


def test_embedder_and_aesthetic_scorer_use_the_checkpoint_preprocessing(
    clip_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Same random weights in both directories: only the preprocessing differs."""
    embedder = ClipEmbedder.load(str(clip_dirs["own"]))
    assert embedder.preprocess.mean == pytest.approx(MEAN)
    images = _images()
    with torch.inference_mode():
        expected = embedder.vision(pixel_values=_by_hand_full(images)).image_embeds
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.allclose(embedder.embed_batch(images), expected, atol=1e-5)

    scores = {}
    for kind in ("own", "bare"):
        settings = ServerSettings(
            models_dir=tmp_path,
            device="cpu",
            aesthetic_clip_model=str(clip_dirs[kind]),
            aesthetic_head=str(clip_dirs["head"]),
        )
        scores[kind] = aesthetic.build(settings).score(images, [""] * 3)[0]
    head = aesthetic.load_head(clip_dirs["head"])
    with torch.inference_mode():
        own_expected = head(expected).squeeze(-1).tolist()
    assert scores["own"] == pytest.approx(own_expected, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(scores["own"], scores["bare"], strict=True)) > 1e-4


def _by_hand_full(images: list[Image.Image]) -> torch.Tensor:
    """The whole transform by hand: bicubic shortest side to 32, centre crop, normalise."""
    out = []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        scale = 32 / min(w, h)
        nw, nh = round(w * scale), round(h * scale)
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - 32) // 2, (nh - 32) // 2
        out.append(np.asarray(image.crop((left, top, left + 32, top + 32))))
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
