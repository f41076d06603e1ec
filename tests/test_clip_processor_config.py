"""A CLIP saved by transformers 5's CLIPProcessor keeps its image processor in
processor_config.json; every CLIP scorer must read it there (issue 25 item 6).

The reference is transformers' own CLIPProcessor + CLIPModel loaded from the same
directory, so the scorers' scores must equal what transformers computes, not what
OpenAI's constants would give.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reward_server.clip_embedding import ClipEmbedder
from reward_server.clip_preprocess import CONFIG_FILES, load_clip_preprocess
from reward_server.scorers import aesthetic, clip_score, pickscore, reward_head
from reward_server.settings import ServerSettings
from tests.helpers.tiny_clip_model import write_tiny_clip_model

#: Far from OpenAI's constants, so a fallback would change every score.
MEAN = (0.2, 0.7, 0.4)
STD = (0.15, 0.45, 0.3)
PROMPTS = ["a red cube", "a blue sphere on grass", "zebra"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model + CLIPProcessor saved by the installed transformers, as a user would."""
    from transformers import CLIPModel, CLIPProcessor

    root = tmp_path_factory.mktemp("procfile")
    # projection 768: the aesthetic head's input width, so one checkpoint serves all scorers
    source = write_tiny_clip_model(
        root / "src", projection_dim=768, logit_scale=math.log(17.0), mean=MEAN, std=STD, seed=4
    )
    out = root / "saved"
    CLIPModel.from_pretrained(source).save_pretrained(out)
    CLIPProcessor.from_pretrained(source).save_pretrained(out)
    return out


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(5)
    return [
        Image.fromarray(rng.integers(0, 256, (36 + 8 * i, 44, 3), dtype=np.uint8))
        for i in range(len(PROMPTS))
    ]


def _reference(directory: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    """transformers' own: (normalised image features, normalised text features, logit scale)."""
    from transformers import CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(directory)
    model = CLIPModel.from_pretrained(directory).eval()
    with torch.no_grad():
        pixels = processor(images=_images(), return_tensors="pt")["pixel_values"]
        tokens = processor(text=PROMPTS, padding=True, return_tensors="pt")
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(**tokens)
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    return (
        image / image.norm(dim=-1, keepdim=True),
        text / text.norm(dim=-1, keepdim=True),
        float(model.logit_scale.detach().exp()),
    )


def test_the_fixture_is_the_transformers_5_layout(saved: Path) -> None:
    import transformers.utils as tu

    assert CONFIG_FILES == (tu.IMAGE_PROCESSOR_NAME, tu.PROCESSOR_NAME)
    assert (saved / "processor_config.json").is_file()
    assert not (saved / "preprocessor_config.json").exists()


def test_preprocess_reads_processor_config(saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    pre = load_clip_preprocess(str(saved), 32, allow_download=False)
    assert pre.mean == pytest.approx(MEAN) and pre.std == pytest.approx(STD)
    assert "OpenAI" not in pre.source and "no image processor config" not in caplog.text


def test_text_image_scorers_equal_transformers(saved: Path) -> None:
    image, text, scale = _reference(saved)
    cos = (image * text).sum(dim=-1)
    settings = ServerSettings(
        device="cpu",
        models_dir=None,
        pickscore_model=str(saved),
        pickscore_processor=str(saved),
        clip_score_model=str(saved),
    )
    pick = pickscore.build(settings).score(_images(), PROMPTS)[0]
    assert pick == pytest.approx((scale * cos).tolist(), abs=1e-4)
    clip = clip_score.build(settings).score(_images(), PROMPTS)[0]
    assert clip == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-3)


def test_embedding_scorers_equal_transformers(saved: Path, tmp_path: Path) -> None:
    """aesthetic, and ClipEmbedder.load: what reward_head and `ddpo fit-reward` embed with."""
    image, _, _ = _reference(saved)
    embedder = ClipEmbedder.load(str(saved))
    assert torch.allclose(embedder.embed_batch(_images()), image, atol=1e-5)
    settings = ServerSettings(device="cpu", models_dir=tmp_path, reward_head_dir=tmp_path / "rh")
    served = reward_head.build(settings)._clip_loader(str(saved))
    assert torch.allclose(served.embed_batch(_images()), image, atol=1e-5)

    torch.manual_seed(0)
    head_path = tmp_path / "head.pth"
    torch.save(aesthetic.AestheticHead().state_dict(), head_path)
    settings = ServerSettings(
        device="cpu", aesthetic_clip_model=str(saved), aesthetic_head=str(head_path)
    )
    scores = aesthetic.build(settings).score(_images(), [""] * len(PROMPTS))[0]
    with torch.inference_mode():
        expected = aesthetic.load_head(head_path)(image).squeeze(-1).tolist()
    assert scores == pytest.approx(expected, abs=1e-5)


def test_processor_only_copy_in_models_dir_is_found(saved: Path, tmp_path: Path) -> None:
    """PickScore's processor repo, re-saved by transformers 5: no preprocessor_config.json."""
    from transformers import CLIPProcessor

    (tmp_path / "PickScore_v1").symlink_to(saved, target_is_directory=True)
    processor = tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K"
    CLIPProcessor.from_pretrained(saved).save_pretrained(processor)
    assert not (processor / "config.json").exists()
    scorer = pickscore.build(ServerSettings(device="cpu", models_dir=tmp_path))
    assert scorer.clip.preprocess.mean == pytest.approx(MEAN)


def test_an_unreadable_config_is_refused_not_replaced(tmp_path: Path) -> None:
    """A config that is there but broken must not silently become OpenAI's constants."""
    from reward_server.clip_preprocess import ClipUnavailable

    (tmp_path / "processor_config.json").write_text("{not json")
    with pytest.raises(ClipUnavailable, match="cannot read the image processor config"):
        load_clip_preprocess(str(tmp_path), 32, allow_download=False)
