"""`pickscore` and `clip_score` on tiny random CLIP models, against the published formulas.

The reference side computes the formulas the way their authors' code does
(CLIPProcessor, get_image_features / get_text_features, the whole score
matrix's diagonal), so it shares no code with the scorers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from reward_server.app import create_app
from reward_server.scorers import clip_score, pickscore
from reward_server.scorers.base import ScorerUnavailable
from reward_server.scorers.registry import build_scorers
from reward_server.settings import ServerSettings
from shared.images import encode_png
from shared.protocol import ScoreResponse
from tests.helpers.tiny_clip_model import write_tiny_clip_model, write_tiny_processor

PICK_LOGIT_SCALE = math.log(21.5)  # not CLIP's init (log 1/0.07): the scale must be read
PROC_MEAN = (0.3, 0.6, 0.45)
PROC_STD = (0.35, 0.2, 0.25)
PROMPTS = ["a red cube", "a blue sphere on grass", "a red cube", "text", "", "zebra " * 30]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clipti")
    return {
        # PickScore's layout: weights in one repo, tokenizer + preprocessing in another.
        "pick": write_tiny_clip_model(
            root / "pick", logit_scale=PICK_LOGIT_SCALE, with_processor=False, seed=1
        ),
        "proc": write_tiny_processor(root / "proc", mean=PROC_MEAN, std=PROC_STD),
        "clip": write_tiny_clip_model(root / "clip", seed=2),
    }


def _images(n: int = len(PROMPTS)) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)) for _ in range(n)]


def _features(out: object) -> torch.Tensor:
    """get_*_features gives a tensor (transformers 4) or an output with pooler_output (5)."""
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]
    return feats / feats.norm(dim=-1, keepdim=True)


def _reference_cosines(model_dir: Path, proc_dir: Path) -> torch.Tensor:
    import transformers
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    pil = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = CLIPProcessor(
        image_processor=pil.from_pretrained(proc_dir),
        tokenizer=CLIPTokenizer.from_pretrained(proc_dir),
    )
    model = CLIPModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        image_in = processor(images=_images(), return_tensors="pt")
        text_in = processor(
            text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        image = _features(model.get_image_features(pixel_values=image_in["pixel_values"]))
        text = _features(model.get_text_features(**text_in))
        return (text @ image.T).diag(), model.logit_scale.exp().item()


def _settings(dirs: dict[str, Path], **kw: object) -> ServerSettings:
    return ServerSettings(
        device="cpu",
        models_dir=None,
        pickscore_model=str(dirs["pick"]),
        pickscore_processor=str(dirs["proc"]),
        clip_score_model=str(dirs["clip"]),
        **kw,
    )


def test_pickscore_is_logit_scale_times_cosine(dirs: dict[str, Path]) -> None:
    scorer = pickscore.build(_settings(dirs))
    assert scorer.clip.logit_scale == pytest.approx(21.5, rel=1e-5)
    assert scorer.clip.preprocess.mean == pytest.approx(PROC_MEAN)  # the processor repo's
    cos, scale = _reference_cosines(dirs["pick"], dirs["proc"])
    scores, details = scorer.score(_images(), PROMPTS)
    assert scores == pytest.approx((scale * cos).tolist(), abs=1e-4)
    assert details is None
    assert scorer.version == "pick"


def test_clip_score_is_100_times_the_positive_cosine(dirs: dict[str, Path]) -> None:
    scorer = clip_score.build(_settings(dirs))
    cos, _ = _reference_cosines(dirs["clip"], dirs["clip"])
    assert (cos < 0).any() and (cos > 0).any(), "the fixture should exercise the clamp"
    scores, _ = scorer.score(_images(), PROMPTS)
    assert scores == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-3)


def test_batch_composition_and_repeated_prompts_do_not_change_a_score(
    dirs: dict[str, Path],
) -> None:
    scorer = pickscore.build(_settings(dirs))
    images = _images()
    together = scorer.score(images, PROMPTS)[0]
    alone = [scorer.score([img], [p])[0][0] for img, p in zip(images, PROMPTS, strict=True)]
    assert together == pytest.approx(alone, abs=1e-4)


def test_missing_weights_are_unavailable_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hub ids not in the (empty) cache: a clear reason, no download, no wait."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    settings = ServerSettings(device="cpu", models_dir=tmp_path)
    for module in (pickscore, clip_score):
        started = time.monotonic()
        with pytest.raises(ScorerUnavailable, match="not at hand.*DDPO_ALLOW_DOWNLOAD"):
            module.build(settings)
        assert time.monotonic() - started < 10
    # Loading "whatever is at hand" skips them instead of failing.
    loaded = build_scorers(settings, None)
    assert "pickscore" not in loaded and "clip_score" not in loaded


def test_models_dir_holds_them_by_name(dirs: dict[str, Path], tmp_path: Path) -> None:
    """models/PickScore_v1 and a processor-only models/CLIP-ViT-H-14-... are found from
    the default hub ids' last parts."""
    (tmp_path / "PickScore_v1").symlink_to(dirs["pick"], target_is_directory=True)
    processor = tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K"
    processor.symlink_to(dirs["proc"], target_is_directory=True)
    assert not (processor / "config.json").exists()
    loaded = build_scorers(ServerSettings(device="cpu", models_dir=tmp_path), ["pickscore"])
    scorer = loaded["pickscore"]
    assert scorer.clip.logit_scale == pytest.approx(21.5, rel=1e-5)
    assert scorer.clip.preprocess.mean == pytest.approx(PROC_MEAN)


def test_served_through_the_batcher(dirs: dict[str, Path]) -> None:
    settings = _settings(dirs, scorers=["pickscore", "clip_score"], batch_max_wait_ms=20)
    direct = {
        "pickscore": pickscore.build(settings).score(_images(), PROMPTS)[0],
        "clip_score": clip_score.build(settings).score(_images(), PROMPTS)[0],
    }
    items = [
        {"id": str(i), "prompt": p, "image": encode_png(np.asarray(img)).model_dump()}
        for i, (img, p) in enumerate(zip(_images(), PROMPTS, strict=True))
    ]
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.05)
        names = {s["name"] for s in client.get("/v1/scorers").json()["scorers"]}
        assert names == {"pickscore", "clip_score"}
        for name, expected in direct.items():
            response = client.post("/v1/score", json={"scorer": name, "items": items})
            assert response.status_code == 200, response.text
            scored = ScoreResponse.model_validate(response.json())
            assert scored.scores == pytest.approx(expected, abs=1e-4)
