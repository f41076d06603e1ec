"""Load a diffusers pipeline and pick its family from the pipeline itself."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from trainer.families.base import DiffusionFamily

#: Pipeline class name -> (module, family class) that handles it.
FAMILIES: dict[str, tuple[str, str]] = {
    "StableDiffusionPipeline": ("trainer.families.sd", "StableDiffusionFamily"),
    "StableDiffusionXLPipeline": ("trainer.families.sdxl", "StableDiffusionXLFamily"),
    "StableDiffusion3Pipeline": ("trainer.families.sd3", "StableDiffusion3Family"),
    "FluxPipeline": ("trainer.families.flux", "FluxFamily"),
}


def family_class(pipeline) -> type[DiffusionFamily]:
    cls_name = type(pipeline).__name__
    if cls_name not in FAMILIES:
        raise ValueError(
            f"pipeline class {cls_name} is not supported; supported: {', '.join(FAMILIES)}"
        )
    module, name = FAMILIES[cls_name]
    return getattr(importlib.import_module(module), name)


def load_family(
    pretrained: str,
    revision: str | None,
    device: torch.device,
    dtype: torch.dtype,
) -> DiffusionFamily:
    """Load `pretrained` (hub id or local dir) and wrap it in the matching family."""
    local = Path(pretrained).expanduser()
    source = str(local) if local.exists() else pretrained
    kwargs = {"revision": revision} if revision else {}
    pipeline = DiffusionPipeline.from_pretrained(source, dtype=torch.float32, **kwargs)
    try:
        family_cls = family_class(pipeline)
    except ValueError as exc:
        raise ValueError(f"{pretrained}: {exc}") from None
    if getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None
    pipeline.scheduler = family_cls.training_scheduler(pipeline)
    pipeline.set_progress_bar_config(disable=True)
    encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    for module in (pipeline.vae, *(getattr(pipeline, n, None) for n in encoders)):
        if module is not None:
            module.requires_grad_(False)
            module.to(device, dtype=dtype)
            module.eval()
    if dtype == torch.float16 and pipeline.vae.config.get("force_upcast", False):
        pipeline.vae.to(dtype=torch.float32)  # the SDXL VAE overflows in fp16
    getattr(pipeline, family_cls.denoiser_name).requires_grad_(False)
    return family_cls(pipeline, device, dtype)
