"""Sample a trained run the way a user would: the plain diffusers pipeline, not our sampler.

The demo judges its model with the trainer's own sampler, at the run's guidance. A gain
that holds only there could be an artefact of that sampler; a user loads the LoRA (or the
full UNet) into `StableDiffusionPipeline` and samples with deterministic DDIM at a guidance
scale of their choosing, or loads a flow model's into `FluxPipeline` and its Euler ODE.
This module does exactly that, so the report can show both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

#: diffusers' own default guidance for Stable Diffusion: what a user picks without thinking.
USER_GUIDANCE_SCALE = 7.5
#: The model card's sampling steps for the tiny models (docs/tiny-model.md).
USER_NUM_STEPS = 20


class UserSampling(BaseModel):
    """How the user-side images are sampled (StableDiffusionPipeline with DDIMScheduler; a
    flow model's own pipeline and Euler scheduler, where eta and guidance do not apply)."""

    eta: float = 0.0
    num_inference_steps: int = USER_NUM_STEPS
    guidance_scale: float = USER_GUIDANCE_SCALE

    def describe(self, flow: bool = False) -> str:
        """For reports: what a reader needs to sample the same way."""
        if flow:
            return f"diffusers FluxPipeline, Euler flow ODE, {self.num_inference_steps} steps"
        return (
            f"diffusers StableDiffusionPipeline, DDIM eta {self.eta:g}, "
            f"{self.num_inference_steps} steps, guidance {self.guidance_scale:g}"
        )


def load_user_pipeline(model: Path, trained: Path | None):
    """`DiffusionPipeline.from_pretrained(model)` with a run's weights, on the CPU.

    A UNet model samples with deterministic DDIM (`StableDiffusionPipeline` and kin); a
    flow model keeps its own scheduler, the flow ODE's Euler steps, deterministic already.
    `trained` is a run's output directory: its lora/ is loaded with `load_lora_weights`,
    else its unet/ or transformer/ replaces the denoiser (full fine-tuning), as a user would.
    """
    from diffusers import DDIMScheduler, DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model), dtype=torch.float32)
    name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    if name == "unet":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if trained is not None and (trained / "lora").is_dir():
        pipe.load_lora_weights(str(trained / "lora"))
    elif trained is not None and (trained / name).is_dir():
        setattr(pipe, name, type(getattr(pipe, name)).from_pretrained(str(trained / name)))
    elif trained is not None:
        raise FileNotFoundError(f"no lora/ or {name}/ under {trained}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def user_images(
    model: Path,
    trained: Path | None,
    prompts: list[str],
    seeds: list[int],
    sampling: UserSampling | None = None,
    batch_size: int = 36,
    resolution: int = 64,
) -> np.ndarray:
    """One image per (prompt, seed), uint8 HWC, from the plain pipeline (seeded per image)."""
    sampling = sampling or UserSampling()
    pipe = load_user_pipeline(model, trained)
    if getattr(pipe, "unet", None) is not None:
        extra = {"eta": sampling.eta, "guidance_scale": sampling.guidance_scale}
    else:  # a flow model: its T5 length as the trainer encodes it, no eta, no CFG here
        from trainer.families.flow_matching import t5_length

        extra = {"max_sequence_length": t5_length(pipe.tokenizer_2)}
    out = []
    for lo in range(0, len(prompts), batch_size):
        batch = slice(lo, lo + batch_size)
        images = pipe(
            prompts[batch],
            height=resolution,
            width=resolution,
            num_inference_steps=sampling.num_inference_steps,
            generator=[torch.Generator().manual_seed(s) for s in seeds[batch]],
            output_type="np",
            **extra,
        ).images
        out.append(np.clip(np.rint(images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)
