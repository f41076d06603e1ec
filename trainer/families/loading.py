"""Load a diffusers pipeline and pick its family from the pipeline itself."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiffusionPipeline

from trainer.families.base import DiffusionFamily


def ddpo_scheduler(pipeline) -> DDIMScheduler:
    """A DDIM scheduler from the pipeline's own config whose last step stays stochastic.

    set_alpha_to_one=False keeps the final step's variance above zero, so every
    step of the chain has a log-probability (SD 1.x ships this way already).
    """
    return DDIMScheduler.from_config(pipeline.scheduler.config, set_alpha_to_one=False)


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
    cls_name = type(pipeline).__name__
    if cls_name == "StableDiffusionXLPipeline":
        from trainer.families.sdxl import StableDiffusionXLFamily

        family_cls: type[DiffusionFamily] = StableDiffusionXLFamily
    elif cls_name == "StableDiffusionPipeline":
        from trainer.families.sd import StableDiffusionFamily

        family_cls = StableDiffusionFamily
    else:
        raise ValueError(
            f"{pretrained}: pipeline class {cls_name} is not supported; "
            "supported: StableDiffusionPipeline (SD 1.x/2.x), StableDiffusionXLPipeline"
        )
    if getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None
    pipeline.scheduler = ddpo_scheduler(pipeline)
    pipeline.set_progress_bar_config(disable=True)
    for module in (pipeline.vae, pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
            module.to(device, dtype=dtype)
            module.eval()
    if dtype == torch.float16 and pipeline.vae.config.get("force_upcast", False):
        pipeline.vae.to(dtype=torch.float32)  # the SDXL VAE overflows in fp16
    pipeline.unet.requires_grad_(False)
    return family_cls(pipeline, device, dtype)
