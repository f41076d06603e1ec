"""The LAION aesthetic predictor: CLIP ViT-L/14 image embedding -> MLP head -> score (~1-10).

This is the reward of the DDPO paper's aesthetic experiments. The CLIP image
embedding (vision tower + projection) is L2-normalised and fed to the LAION
"improved aesthetic predictor" MLP. Both weight files are looked up locally
first (a path, then `models_dir`, then the Hugging Face cache); nothing is
downloaded unless `allow_download` is set. `transformers` is imported only when
the scorer is built, so servers without it (or without this scorer) start fast.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from reward_server.scorers.base import Scorer, ScorerUnavailable
from reward_server.settings import LAION_AESTHETIC_HEAD, TRL_AESTHETIC_HEAD

if TYPE_CHECKING:
    from reward_server.settings import ServerSettings

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EMBED_DIM = 768


class ClipPreprocess:
    """CLIPImageProcessor's transform in plain PIL + torch (no torchvision needed).

    Resize the shortest side to `size` (bicubic), center-crop `size`x`size`,
    scale to [0, 1], normalise with the CLIP mean and std.
    """

    def __init__(self, size: int = 224) -> None:
        self.size = size
        self.mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def _resize_crop(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(self.size * long / short)
        new_w, new_h = (self.size, new_long) if width <= height else (new_long, self.size)
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        return np.asarray(image, dtype=np.uint8)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        batch = np.stack([self._resize_crop(img) for img in images])
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        return (pixels - self.mean) / self.std


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
        self.device = torch.device(device)
        self.vision = vision.eval().requires_grad_(False).to(self.device)
        self.head = head.eval().requires_grad_(False).to(self.device)
        self.preprocess = preprocess
        self.version = version
        self.max_batch_size = max_batch_size

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.device)
        embeds = self.vision(pixel_values=pixels).image_embeds
        return embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        with torch.inference_mode():
            scores = self.head(self.embed(images).float()).squeeze(-1)
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
    spec = settings.aesthetic_clip_model
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if settings.models_dir is not None:
        for candidate in (settings.models_dir / spec, settings.models_dir / path.name):
            if (candidate / "config.json").is_file():
                return str(candidate)
    return spec


def load_clip_vision(spec: str, allow_download: bool) -> nn.Module:
    """CLIP vision tower + projection; reads full CLIPModel checkpoints too."""
    try:
        from transformers import CLIPVisionModelWithProjection
    except ImportError as exc:
        raise ScorerUnavailable(f"transformers is not installed: {exc}") from exc
    try:
        model, info = CLIPVisionModelWithProjection.from_pretrained(
            spec, local_files_only=not allow_download, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        hint = "" if allow_download else " (set DDPO_ALLOW_DOWNLOAD=1 to fetch it)"
        raise ScorerUnavailable(f"CLIP model {spec!r} is not at hand{hint}: {exc}") from exc
    missing = sorted(map(str, info.get("missing_keys") or []))
    missing += sorted(str(k[0]) for k in info.get("mismatched_keys") or [])
    if missing:
        # Randomly initialised layers would score silently wrong: refuse instead.
        raise ScorerUnavailable(
            f"CLIP model {spec!r} lacks or mis-shapes {len(missing)} vision weights, "
            f"e.g. {missing[:3]}"
        )
    return model


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
    device = settings.resolve_device()
    version = f"{Path(clip_spec).name}+head-{file_digest(head_path)[:12]}"
    log.info("aesthetic scorer: CLIP %s, head %s, device %s", clip_spec, head_path, device)
    return AestheticScorer(
        vision,
        head,
        ClipPreprocess(config.image_size),
        device=device,
        version=version,
        max_batch_size=64 if device == "cuda" else 16,
    )
