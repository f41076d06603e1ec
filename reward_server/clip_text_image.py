"""A full CLIP model (text and vision towers) measuring how well each image matches its prompt.

Shared by the `pickscore` and `clip_score` scorers, which differ only in the
checkpoint and in what they make of the cosine. The weights, the tokenizer and
the preprocessor config are each a hub id (looked up in the cache only, unless
downloads are allowed) or a local directory; the model and its processor may
come from different places, as PickScore's do. `transformers` is imported
only here, when a model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from reward_server.clip_preprocess import ClipPreprocess, ClipUnavailable, load_clip_preprocess

log = logging.getLogger(__name__)

_HINT = " (set DDPO_ALLOW_DOWNLOAD=1 to fetch it)"


def _load_model(spec: str, allow_download: bool) -> nn.Module:
    try:
        from transformers import CLIPModel
    except ImportError as exc:
        raise ClipUnavailable(f"transformers is not installed: {exc}") from exc
    try:
        model, info = CLIPModel.from_pretrained(
            spec, local_files_only=not allow_download, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        hint = "" if allow_download else _HINT
        raise ClipUnavailable(f"CLIP model {spec!r} is not at hand{hint}: {exc}") from exc
    missing = sorted(map(str, info.get("missing_keys") or []))
    missing += sorted(str(k[0]) for k in info.get("mismatched_keys") or [])
    if missing:
        # Randomly initialised layers would score silently wrong: refuse instead.
        raise ClipUnavailable(
            f"CLIP model {spec!r} lacks or mis-shapes {len(missing)} weights, e.g. {missing[:3]}"
        )
    return model


def _load_tokenizer(spec: str, allow_download: bool) -> Any:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(spec, local_files_only=not allow_download)
    except (OSError, ValueError, TypeError) as exc:
        hint = "" if allow_download else _HINT
        raise ClipUnavailable(f"CLIP tokenizer of {spec!r} is not at hand{hint}: {exc}") from exc


class ClipTextImage:
    """Cosines of L2-normalised CLIP text and image embeddings, one per (image, prompt) pair."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        preprocess: ClipPreprocess,
        device: str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        positions = int(model.config.text_config.max_position_embeddings)
        self.max_length = min(int(tokenizer.model_max_length), positions)

    @classmethod
    def load(
        cls, model_spec: str, processor_spec: str, *, allow_download: bool, device: str
    ) -> ClipTextImage:
        model = _load_model(model_spec, allow_download)
        tokenizer = _load_tokenizer(processor_spec, allow_download)
        image_size = int(model.config.vision_config.image_size)
        preprocess = load_clip_preprocess(processor_spec, image_size, allow_download)
        log.info(
            "CLIP %s: tokenizer of %s, preprocessing: %s",
            model_spec,
            processor_spec,
            preprocess.source,
        )
        return cls(model, tokenizer, preprocess, device)

    @property
    def logit_scale(self) -> float:
        """exp of the checkpoint's learnt log-temperature (100 for OpenAI CLIP)."""
        return float(self.model.logit_scale.detach().float().exp())

    def image_embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.device)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return _normalised(self.model.visual_projection(pooled))

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        out = self.model.text_model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        return _normalised(self.model.text_projection(out.pooler_output))

    def cosines(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """(N,) float32 on the CPU; each prompt is encoded once however often it repeats."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        slot = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        unique = list(slot)
        index = torch.tensor([slot[p] for p in prompts], device=self.device)
        with torch.inference_mode():
            text = self.text_embeds(unique)[index]
            image = self.image_embeds(images)
            return (text * image).sum(dim=-1).cpu()


def _normalised(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
