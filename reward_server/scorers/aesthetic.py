"""The LAION aesthetic predictor: CLIP ViT-L/14 image embedding -> MLP head -> score (~1-10).

This is the reward of the DDPO paper's aesthetic experiments. The CLIP image
embedding (vision tower + projection) is L2-normalised and fed to the LAION
"improved aesthetic predictor" MLP. Both weight files are looked up locally
first (a path, then `models_dir`, then the Hugging Face cache); nothing is
downloaded unless `allow_download` is set. `transformers` is imported only when
the scorer is built, so servers without it (or without this scorer) start fast.
The CLIP side (lookup, embedding, and preprocessing from the checkpoint's own
preprocessor config) is reward_server/clip_embedding.py and clip_preprocess.py,
shared with the `reward_head` scorer; its names are re-exported here.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn

from reward_server.clip_embedding import (
    ClipEmbedder,
    ClipPreprocess,
    load_clip_vision,
    resolve_clip_spec,
)
from reward_server.clip_preprocess import load_clip_preprocess
from reward_server.scorers.base import Scorer, ScorerUnavailable
from reward_server.settings import LAION_AESTHETIC_HEAD, TRL_AESTHETIC_HEAD

if TYPE_CHECKING:
    from reward_server.settings import ServerSettings

log = logging.getLogger(__name__)

EMBED_DIM = 768


class AestheticHead(nn.Module):
    """The LAION MLP; module names match its checkpoint (`layers.0.weight`, ...)."""

    #: Indices of the Linear layers inside `layers` (the others are Dropouts).
    LINEAR_INDICES = (0, 2, 4, 6, 7)

    def __init__(self, in_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


_HEAD_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)(?:layers\.)?(?P<idx>\d+)\.(?P<kind>weight|bias)$")


def normalize_head_keys(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Map any known spelling of the head's keys to `layers.<i>.<weight|bias>`.

    The LAION file uses `layers.0.weight`; trl's wrapper and Lightning
    checkpoints add prefixes (`mlp.layers.0.weight`, `model.layers.0.weight`);
    a bare Sequential has `0.weight`. Exactly one prefix must hold all ten tensors.
    """
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    wanted = {(i, kind) for i in AestheticHead.LINEAR_INDICES for kind in ("weight", "bias")}
    groups: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
    for key, value in state.items():
        match = _HEAD_KEY.match(str(key))
        if match is None or not isinstance(value, torch.Tensor):
            continue
        slot = (int(match["idx"]), match["kind"])
        if slot in wanted:
            groups.setdefault(match["prefix"], {})[slot] = value
    complete = [prefix for prefix, found in groups.items() if set(found) == wanted]
    if len(complete) != 1:
        sample = ", ".join(list(map(str, state))[:8])
        raise ValueError(
            "cannot find the aesthetic head's Linear layers 0,2,4,6,7 "
            f"({'several candidates' if complete else 'none complete'}); keys start: {sample}"
        )
    found = groups[complete[0]]
    return {f"layers.{i}.{kind}": found[(i, kind)] for i, kind in sorted(wanted)}


def load_head(path: Path) -> AestheticHead:
    """Load a head from a .pth pickle (weights only, never arbitrary code) or .safetensors."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: Mapping[str, Any] = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not a state dict")
    head = AestheticHead()
    head.load_state_dict(normalize_head_keys(raw), strict=True)
    return head.eval()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class AestheticScorer(Scorer):
    name = "aesthetic"
    description = (
        "LAION improved aesthetic predictor: normalised CLIP ViT-L/14 image embedding "
        "into an MLP head; higher is prettier (roughly 1-10)."
    )

    def __init__(
        self,
        vision: nn.Module,
        head: AestheticHead,
        preprocess: ClipPreprocess,
        device: str = "cpu",
        version: str = "1",
        max_batch_size: int = 32,
    ) -> None:
        self.clip = ClipEmbedder(vision, device=device, preprocess=preprocess)
        self.device = self.clip.device
        self.vision = self.clip.vision
        self.head = head.eval().requires_grad_(False).to(self.device)
        self.preprocess = preprocess
        self.version = version
        self.max_batch_size = max_batch_size

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        return self.clip.embed_batch(images)

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        with torch.inference_mode():
            scores = self.head(self.embed(images)).squeeze(-1)
        return scores.cpu().tolist(), None


def _hub_file(spec: str, settings: ServerSettings) -> Path:
    """A local path, a file under models_dir, or `owner/repo/path` in the hub cache."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if settings.models_dir is not None:
        for candidate in (settings.models_dir / spec, settings.models_dir / path.name):
            if candidate.is_file():
                return candidate
    parts = spec.split("/")
    if path.is_absolute() or spec.startswith(".") or len(parts) < 3:
        raise ScorerUnavailable(f"aesthetic head file {spec!r} does not exist")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(repo_id, filename, local_files_only=not settings.allow_download)
        )
    except Exception as exc:
        hint = "" if settings.allow_download else " (set DDPO_ALLOW_DOWNLOAD=1 to fetch it)"
        raise ScorerUnavailable(
            f"aesthetic head {filename!r} of {repo_id!r} is not at hand{hint}: {type(exc).__name__}"
        ) from exc


def resolve_head_file(settings: ServerSettings) -> Path:
    """The configured head; when left at the LAION default, trl's copy also counts."""
    specs = [settings.aesthetic_head]
    if settings.aesthetic_head == LAION_AESTHETIC_HEAD:
        specs.append(TRL_AESTHETIC_HEAD)
    reasons = []
    for spec in specs:
        try:
            return _hub_file(spec, settings)
        except ScorerUnavailable as exc:
            reasons.append(str(exc))
    raise ScorerUnavailable("; ".join(reasons))


def resolve_clip_model(settings: ServerSettings) -> str:
    """A local directory when there is one, else the hub id (to look up in the cache)."""
    return resolve_clip_spec(settings.aesthetic_clip_model, settings.models_dir)


def build(settings: ServerSettings) -> AestheticScorer:
    head_path = resolve_head_file(settings)
    try:
        head = load_head(head_path)
    except Exception as exc:
        raise ScorerUnavailable(f"cannot load aesthetic head {head_path}: {exc}") from exc
    clip_spec = resolve_clip_model(settings)
    vision = load_clip_vision(clip_spec, settings.allow_download)
    config = vision.config
    if config.projection_dim != EMBED_DIM:
        raise ScorerUnavailable(
            f"CLIP model {clip_spec!r} projects to {config.projection_dim} dims; "
            f"the aesthetic head needs {EMBED_DIM} (ViT-L/14)"
        )
    preprocess = load_clip_preprocess(clip_spec, config.image_size, settings.allow_download)
    device = settings.resolve_device()
    version = f"{Path(clip_spec).name}+head-{file_digest(head_path)[:12]}"
    log.info(
        "aesthetic scorer: CLIP %s (preprocessing: %s), head %s, device %s",
        clip_spec,
        preprocess.source,
        head_path,
        device,
    )
    return AestheticScorer(
        vision,
        head,
        preprocess,
        device=device,
        version=version,
        max_batch_size=64 if device == "cuda" else 16,
    )


__all__ = [
    "EMBED_DIM",
    "AestheticHead",
    "AestheticScorer",
    "ClipPreprocess",
    "build",
    "file_digest",
    "load_clip_vision",
    "load_head",
    "normalize_head_keys",
    "resolve_clip_model",
    "resolve_head_file",
]
