"""The held-out figure of benchmarks/jpeg_transfer.py: mean JPEG size of fixed samples.

Fixed prompts x fixed seeds, sampled by diffusers' StableDiffusionPipeline with
the sampler settings of the run being judged (DDIM steps, guidance, eta), one
generator per image so an image depends only on its seed, never on the batch.
The same call before training (base weights) and after it (the weights the run
saved: a LoRA directory or a full UNet) gives a paired before/after. JPEG size
is the reward server's own (reward_server.scorers.jpeg.jpeg_size_kb, quality 95).
Runs in the project venv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict

#: Seeds no trainer draws from: ours seeds samples by SeedSequence, trl by its own RNG.
EVAL_SEED_BASE = 900_000


class Sampler(BaseModel):
    """The sampler settings a run trained with, hence the ones it is judged with."""

    model_config = ConfigDict(frozen=True)

    steps: int
    guidance: float
    eta: float


class Weights(BaseModel):
    """What a run saved: a diffusers LoRA directory (with its alpha / rank) or a full UNet."""

    kind: Literal["lora", "unet"]
    path: Path
    lora_scale: float = 1.0


def eval_seeds(n: int) -> list[int]:
    return [EVAL_SEED_BASE + i for i in range(n)]


def sample_images(
    model_dir: Path,
    prompts: list[str],
    seeds: list[int],
    sampler: Sampler,
    weights: Weights | None = None,
) -> list[Image.Image]:
    """One image per (prompt, seed), prompt-major, as a user's diffusers pipeline draws it."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32)
    # Both trainers' DDPO step ends on alphas_cumprod[0] (no zero-variance last step).
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False)
    pipe.set_progress_bar_config(disable=True)
    if weights is not None and weights.kind == "unet":
        pipe.unet = UNet2DConditionModel.from_pretrained(weights.path, dtype=torch.float32)
    elif weights is not None:
        # Saved without network alphas, diffusers loads a LoRA at scale 1: set alpha / rank.
        pipe.load_lora_weights(str(weights.path), adapter_name="trained")
        pipe.set_adapters(["trained"], adapter_weights=[weights.lora_scale])
    images: list[Image.Image] = []
    with torch.no_grad():
        for prompt in prompts:
            out = pipe(
                [prompt] * len(seeds),
                num_inference_steps=sampler.steps,
                guidance_scale=sampler.guidance,
                eta=sampler.eta,
                generator=[torch.Generator().manual_seed(s) for s in seeds],
            )
            images += out.images
    return images


def jpeg_sizes_kb(
    model_dir: Path,
    prompts: list[str],
    seeds: list[int],
    sampler: Sampler,
    weights: Weights | None = None,
) -> list[float]:
    """JPEG size in kB of every (prompt, seed) sample, prompt-major."""
    from reward_server.scorers.jpeg import jpeg_size_kb

    return [jpeg_size_kb(img) for img in sample_images(model_dir, prompts, seeds, sampler, weights)]
