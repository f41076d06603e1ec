"""Sampling denoising trajectories: every latent, every step's log-prob, the images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from trainer.families.base import (
    DiffusionFamily,
    PromptEmbeds,
    cat_embeds,
    expand_embeds,
    index_embeds,
)


@dataclass
class Trajectories:
    """A batch of sampled denoising chains, batch dimension first everywhere."""

    prompts: list[str]
    prompt_ids: torch.Tensor  # (B,) index into the run's prompt list
    embeds: PromptEmbeds  # conditioning, (B, ...)
    # (B, T+1, C, H, W) float32: x_T ... x_0, exactly as log-probbed; with an SDE window
    # of k steps only the window's k + 1 latents (T = k), the ODE steps around it being fixed.
    latents: torch.Tensor
    log_probs: torch.Tensor  # (B, T) log-prob of each sampled (stochastic) step
    timesteps: torch.Tensor  # (B, T)
    images: np.ndarray  # (B, H, W, 3) uint8
    # (B, T, H, W, 3) uint8 with `predict_x0_images`: the image each stored latent's x0
    # prediction decodes to (the state before each stochastic step), for step baselines.
    x0_images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @staticmethod
    def cat(parts: list[Trajectories]) -> Trajectories:
        return Trajectories(
            prompts=[p for part in parts for p in part.prompts],
            prompt_ids=torch.cat([p.prompt_ids for p in parts]),
            embeds=cat_embeds([p.embeds for p in parts]),
            latents=torch.cat([p.latents for p in parts]),
            log_probs=torch.cat([p.log_probs for p in parts]),
            timesteps=torch.cat([p.timesteps for p in parts]),
            images=np.concatenate([p.images for p in parts]),
            x0_images=None
            if any(p.x0_images is None for p in parts)
            else np.concatenate([p.x0_images for p in parts]),
        )

    def to(self, device: torch.device | str) -> Trajectories:
        """The tensors PPO reads, on `device` (prompts and images stay as they are)."""
        return Trajectories(
            prompts=self.prompts,
            prompt_ids=self.prompt_ids,
            embeds={k: v.to(device) for k, v in self.embeds.items()},
            latents=self.latents.to(device),
            log_probs=self.log_probs.to(device),
            timesteps=self.timesteps.to(device),
            images=self.images,
            x0_images=self.x0_images,
        )

    def select(self, index: torch.Tensor) -> Trajectories:
        idx = index.tolist()
        return Trajectories(
            prompts=[self.prompts[i] for i in idx],
            prompt_ids=self.prompt_ids[index],
            embeds=index_embeds(self.embeds, index),
            latents=self.latents[index],
            log_probs=self.log_probs[index],
            timesteps=self.timesteps[index],
            images=self.images[idx],
            x0_images=None if self.x0_images is None else self.x0_images[idx],
        )


def sample_seed(seed: int, epoch: int, rank: int, batch: int, item: int) -> int:
    """A seed per sample that depends only on where it sits in the run, for exact resumes."""
    return int(np.random.SeedSequence([seed, epoch, rank, batch, item]).generate_state(1)[0])


class ChainStart(NamedTuple):
    """What every sampler sets up before its first step, the same way for all of them."""

    cond: PromptEmbeds  # (B, ...)
    uncond: PromptEmbeds | None  # (B, ...) where guidance is on, else None
    generators: list[torch.Generator]  # one per sample, seeded by its seed
    latents: torch.Tensor  # (B, C, H, W) float32 on the family's device: x_T


def start_chain(
    family: DiffusionFamily,
    prompts: list[str],
    seeds: list[int],
    num_steps: int,
    guidance_scale: float,
    resolution: int,
    uncond: PromptEmbeds | None = None,
) -> ChainStart:
    """Set the schedule, encode the prompts and draw each sample's starting noise.

    One generator per sample: a sample's noise does not change with batch size or
    rank layout, and PPO's and the forward-process samplers start alike from a seed.
    """
    shape = family.latent_shape(resolution)
    family.set_timesteps(num_steps, shape)
    batch = len(prompts)
    cond = family.encode_prompts(prompts, resolution)
    use_cfg = guidance_scale != 1.0
    if use_cfg and uncond is None:
        uncond = family.encode_unconditional(resolution)
    uncond_b = expand_embeds(uncond, batch) if use_cfg else None
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    latents = torch.stack([torch.randn(shape, generator=g) for g in generators])
    latents = family.initial_latents(latents).to(family.device, torch.float32)
    return ChainStart(cond, uncond_b, generators, latents)


@torch.no_grad()
def sample_trajectories(
    family: DiffusionFamily,
    unet: torch.nn.Module,
    prompts: list[str],
    prompt_ids: torch.Tensor,
    seeds: list[int],
    num_steps: int,
    guidance_scale: float,
    eta: float,
    resolution: int,
    uncond: PromptEmbeds | None = None,
    window: range | None = None,
    predict_x0_images: bool = False,
) -> Trajectories:
    """Run the family's chain for one batch, recording what PPO needs to re-score it.

    Steps in `window` (default: all) are the family's stochastic step with a
    log-prob; the others its deterministic step, not recorded (`trainer/sde_window.py`).

    Noise comes from one generator per sample (`start_chain`). The chain is kept in
    float32 whatever the weight dtype: each step's log-prob is taken on the very
    latent that is stored and later re-scored (rounding it to bf16 afterwards would
    bias every ratio).

    `predict_x0_images`: also decode the model's x0 prediction at each stochastic
    step (one VAE decode per step), the states a step baseline scores.
    """
    device = family.device
    scheduler = family.pipeline.scheduler
    start = start_chain(family, prompts, seeds, num_steps, guidance_scale, resolution, uncond)
    cond, uncond_b, generators, latents = start
    window = range(len(scheduler.timesteps)) if window is None else window
    batch = len(prompts)

    all_latents = []
    all_log_probs = []
    x0_images = []
    for i, t in enumerate(scheduler.timesteps):
        if i == window.start:
            all_latents.append(latents)
        t_batch = t.repeat(batch).to(device)
        model_in = family.model_input(latents, t_batch)
        output = family.predict(unet, model_in, t_batch, cond, uncond_b, guidance_scale)
        if i in window:
            if predict_x0_images:
                x0 = family.predicted_x0(output.float(), t_batch, latents)
                x0_images.append(family.decode(x0))
            latents, log_prob = family.step_with_logprob(
                output.float(), t_batch, latents, eta, generator=generators
            )
            all_latents.append(latents)
            all_log_probs.append(log_prob)
        else:
            latents = family.deterministic_step(output.float(), t_batch, latents)

    images = family.decode(latents)
    return Trajectories(
        prompts=list(prompts),
        prompt_ids=prompt_ids.cpu(),
        embeds=cond,
        latents=torch.stack(all_latents, dim=1),
        log_probs=torch.stack(all_log_probs, dim=1).float(),
        timesteps=scheduler.timesteps[window.start : window.stop].to(device).repeat(batch, 1),
        images=images,
        x0_images=np.stack(x0_images, axis=1) if predict_x0_images else None,
    )
