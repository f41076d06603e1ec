"""Sampling for the forward-process algorithms: only each chain's clean latent is kept.

PPO keeps all T + 1 latents of a chain (SD 1.5 at 512 px, 50 steps: 51 x 4 x 64 x 64
float32 = 3.3 MB per sample); NFT and AWM re-noise the clean latent themselves, so
one latent (64 KiB) is all they keep. No step log-probs: any solver will do, and the
default is the deterministic one (DDIM eta 0, the flow ODE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.families.base import DiffusionFamily, PromptEmbeds, cat_embeds, index_embeds
from trainer.sampling import start_chain


@dataclass
class CleanSamples:
    """A batch of sampled clean latents, batch dimension first everywhere."""

    prompts: list[str]
    prompt_ids: torch.Tensor  # (B,)
    embeds: PromptEmbeds  # conditioning, (B, ...)
    latents: torch.Tensor  # (B, C, H, W) float32: x_0 as decoded
    images: np.ndarray  # (B, H, W, 3) uint8
    x0_images: None = None  # no per-step images (PPO's step baselines only)

    def __len__(self) -> int:
        return len(self.prompts)

    @staticmethod
    def cat(parts: list[CleanSamples]) -> CleanSamples:
        return CleanSamples(
            prompts=[p for part in parts for p in part.prompts],
            prompt_ids=torch.cat([p.prompt_ids for p in parts]),
            embeds=cat_embeds([p.embeds for p in parts]),
            latents=torch.cat([p.latents for p in parts]),
            images=np.concatenate([p.images for p in parts]),
        )

    def select(self, index: torch.Tensor) -> CleanSamples:
        idx = index.tolist()
        return CleanSamples(
            prompts=[self.prompts[i] for i in idx],
            prompt_ids=self.prompt_ids[index],
            embeds=index_embeds(self.embeds, index.to(self.latents.device)),
            latents=self.latents[index.to(self.latents.device)],
            images=self.images[idx],
        )


@torch.no_grad()
def sample_clean(
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
    stochastic: bool = False,
) -> CleanSamples:
    """Run the family's chain for one batch and keep its end.

    Starts as `sample_trajectories` does (`start_chain`), so the same seeds start
    from the same noise. With `stochastic` every step is the family's stochastic one
    (noise `eta`).
    """
    device = family.device
    scheduler = family.pipeline.scheduler
    start = start_chain(family, prompts, seeds, num_steps, guidance_scale, resolution, uncond)
    cond, uncond_b, generators, latents = start
    batch = len(prompts)
    for t in scheduler.timesteps:
        t_batch = t.repeat(batch).to(device)
        model_in = family.model_input(latents, t_batch)
        output = family.predict(unet, model_in, t_batch, cond, uncond_b, guidance_scale).float()
        if stochastic:
            latents, _ = family.step_with_logprob(output, t_batch, latents, eta, generators)
        else:
            latents = family.deterministic_step(output, t_batch, latents)
    return CleanSamples(
        prompts=list(prompts),
        prompt_ids=prompt_ids.cpu(),
        embeds=cond,
        latents=latents,
        images=family.decode(latents),
    )
