"""The aesthetic scorer's real loading code, on tiny random weights of the real shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from reward_server.scorers import aesthetic
from reward_server.scorers.aesthetic import (
    AestheticHead,
    ClipPreprocess,
    load_head,
    normalize_head_keys,
)
from reward_server.scorers.base import ScorerUnavailable
from reward_server.settings import ServerSettings
from tests.helpers.tiny_clip import write_tiny_aesthetic_weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("aesthetic")
    clip, laion = write_tiny_aesthetic_weights(root, head_format="laion")
    _, trl = write_tiny_aesthetic_weights(root, head_format="trl")
    _, st = write_tiny_aesthetic_weights(root, head_format="safetensors")
    full, _ = write_tiny_aesthetic_weights(root, full_clip=True)
    return {"root": root, "clip": clip, "full": full, "laion": laion, "trl": trl, "st": st}


def _images() -> list[Image.Image]:
    return [
        Image.new("RGB", (48, 32), (250, 10, 10)),
        Image.new("RGB", (20, 70), (10, 200, 30)),
        Image.linear_gradient("L").convert("RGB"),
    ]


def _settings(tmp_path: Path, **kw: Any) -> ServerSettings:
    return ServerSettings(models_dir=tmp_path, device="cpu", **kw)


def test_head_matches_laion_layout() -> None:
    shapes = {k: tuple(v.shape) for k, v in AestheticHead().state_dict().items()}
    assert shapes == {
        "layers.0.weight": (1024, 768),
        "layers.0.bias": (1024,),
        "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,),
        "layers.4.weight": (64, 128),
        "layers.4.bias": (64,),
        "layers.6.weight": (16, 64),
        "layers.6.bias": (16,),
        "layers.7.weight": (1, 16),
        "layers.7.bias": (1,),
    }


@pytest.mark.parametrize("prefix", ["", "mlp.", "model.mlp.", "BARE"])
def test_key_normalisation(prefix: str) -> None:
    state = AestheticHead().state_dict()
    if prefix == "BARE":
        renamed = {k.removeprefix("layers."): v for k, v in state.items()}
    else:
        renamed = {prefix + k: v for k, v in state.items()}
    renamed["clip.vision_model.encoder.layers.0.mlp.fc1.weight"] = torch.zeros(2)  # ignored
    assert normalize_head_keys(renamed).keys() == state.keys()
    wrapped = normalize_head_keys({"state_dict": renamed, "epoch": 3})
    assert all(torch.equal(wrapped[k], state[k]) for k in state)


def test_key_normalisation_refuses_incomplete_or_ambiguous() -> None:
    state = AestheticHead().state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("layers.7")}
    with pytest.raises(ValueError, match="none complete"):
        normalize_head_keys(partial)
    double = {**{f"a.{k}": v for k, v in state.items()}, **{f"b.{k}": v for k, v in state.items()}}
    with pytest.raises(ValueError, match="several"):
        normalize_head_keys(double)


def test_all_head_formats_load_the_same(tiny: dict[str, Path]) -> None:
    heads = [load_head(tiny[k]) for k in ("laion", "trl", "st")]
    x = torch.randn(3, 768)
    out = [h(x) for h in heads]
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[0], out[2])


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"layers.0.weight": object()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_head(path)


def test_preprocess_matches_clip_image_processor() -> None:
    transformers = pytest.importorskip("transformers")
    proc_cls = (
        getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    )
    ref = proc_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = _images()
    expected = ref(images=images, return_tensors="pt")["pixel_values"]
    got = ClipPreprocess(32)(images)
    assert got.shape == (3, 3, 32, 32)
    assert torch.allclose(got, expected, atol=1e-4)


def test_build_and_score(tiny: dict[str, Path], tmp_path: Path) -> None:
    s = _settings(
        tmp_path, aesthetic_clip_model=str(tiny["clip"]), aesthetic_head=str(tiny["laion"])
    )
    scorer = aesthetic.build(s)
    scores, details = scorer.score(_images(), ["a", "b", "c"])
    assert len(scores) == 3 and all(isinstance(v, float) for v in scores)
    assert details is None
    assert scorer.version.startswith("tiny-clip+head-")
    # Batch composition does not change a score.
    single = [scorer.score([img], [""])[0][0] for img in _images()]
    assert single == pytest.approx(scores, abs=1e-5)


def test_full_clip_checkpoint_equals_clip_model_image_features(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """A CLIPModel checkpoint (as openai/clip-vit-large-patch14 ships) gives the DDPO reward."""
    from transformers import CLIPModel

    s = _settings(tmp_path, aesthetic_clip_model=str(tiny["full"]), aesthetic_head=str(tiny["trl"]))
    scorer = aesthetic.build(s)
    images = _images()
    clip = CLIPModel.from_pretrained(tiny["full"]).eval()
    with torch.no_grad():
        feats = clip.get_image_features(pixel_values=ClipPreprocess(32)(images))
        feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
        feats = feats / feats.norm(dim=-1, keepdim=True)
        expected = load_head(tiny["trl"])(feats).squeeze(-1).tolist()
    assert scorer.score(images, [""] * 3)[0] == pytest.approx(expected, abs=1e-5)


def test_models_dir_lookup(tiny: dict[str, Path]) -> None:
    s = ServerSettings(
        models_dir=tiny["root"], aesthetic_clip_model="someone/tiny-clip", device="cpu"
    )
    # Default head spec: its basename is found under models_dir.
    assert aesthetic.resolve_head_file(s) == tiny["laion"]
    assert aesthetic.resolve_clip_model(s) == str(tiny["clip"])


def test_hub_lookup_never_downloads_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def fake_download(repo_id: str, filename: str, **kw: Any) -> str:
        calls.append({"repo_id": repo_id, "filename": filename, **kw})
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(ScorerUnavailable, match="DDPO_ALLOW_DOWNLOAD"):
        aesthetic.build(_settings(tmp_path))
    # Both the LAION file and trl's copy were probed, cache only.
    assert [(c["repo_id"], c["filename"]) for c in calls] == [
        ("camenduru/improved-aesthetic-predictor", "sac+logos+ava1-l14-linearMSE.pth"),
        ("trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"),
    ]
    assert all(c["local_files_only"] is True for c in calls)

    calls.clear()
    with pytest.raises(ScorerUnavailable):
        aesthetic.build(_settings(tmp_path, allow_download=True))
    assert calls[0]["local_files_only"] is False


def test_clip_not_cached_is_unavailable(tiny: dict[str, Path], tmp_path: Path) -> None:
    s = _settings(
        tmp_path, aesthetic_clip_model="nobody/no-such-clip", aesthetic_head=str(tiny["laion"])
    )
    with pytest.raises(ScorerUnavailable, match="no-such-clip"):
        aesthetic.build(s)


def test_wrong_projection_width_is_unavailable(tiny: dict[str, Path], tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=16,
        patch_size=8,
        projection_dim=512,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "b32")
    s = _settings(
        tmp_path, aesthetic_clip_model=str(tmp_path / "b32"), aesthetic_head=str(tiny["laion"])
    )
    with pytest.raises(ScorerUnavailable, match="512"):
        aesthetic.build(s)


def test_missing_head_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ScorerUnavailable, match="does not exist"):
        aesthetic.build(_settings(tmp_path, aesthetic_head=str(tmp_path / "nope.pth")))
