"""The narrow interface between the DDPO trainer and a diffusers pipeline family."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from diffusers import DDIMScheduler

from trainer.ddim_logprob import (
    ddim_alpha_prod,
    ddim_predicted_x0,
    ddim_step_mean_std,
    ddim_step_with_logprob,
)

#: Conditioning tensors of a batch, each with the batch dimension first, so a
#: trajectory buffer can concatenate, index and shuffle them without knowing
#: the family (SD: prompt_embeds; SDXL adds pooled embeddings and time ids).
PromptEmbeds = dict[str, torch.Tensor]


def index_embeds(embeds: PromptEmbeds, index: torch.Tensor | slice) -> PromptEmbeds:
    return {k: v[index] for k, v in embeds.items()}


def expand_embeds(embeds: PromptEmbeds, n: int) -> PromptEmbeds:
    """Broadcast a batch-of-one conditioning (the CFG negative) to `n` rows, without copying."""
    return {k: v[:1].expand(n, *v.shape[1:]) for k, v in embeds.items()}


def cat_embeds(parts: list[PromptEmbeds]) -> PromptEmbeds:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class DiffusionFamily(ABC):
    """A loaded pipeline seen through the operations DDPO needs.

    The family brings its denoiser (a UNet or a transformer) and its step: DDIM
    with a log-prob here, Flow-GRPO's SDE in `trainer/families/flow_matching.py`.
    """

    #: Short name shown in logs and saved with checkpoints ("sd", "sdxl").
    name: str = ""
    #: The pipeline attribute holding the trained network, and the folder its weights go to.
    denoiser_name: str = "unet"

    def __init__(self, pipeline, device: torch.device, dtype: torch.dtype) -> None:
        self.pipeline = pipeline
        self.device = device
        self.dtype = dtype

    @staticmethod
    def training_scheduler(pipeline):
        """A DDIM scheduler from the pipeline's own config whose last step stays stochastic.

        set_alpha_to_one=False keeps the final step's variance above zero, so every
        step of the chain has a log-probability (SD 1.x ships this way already).
        """
        return DDIMScheduler.from_config(pipeline.scheduler.config, set_alpha_to_one=False)

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.denoiser_name)

    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser under its SD name (a transformer for the flow-matching families)."""
        return self.denoiser

    @property
    def default_resolution(self) -> int:
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipeline.vae.config.block_out_channels) - 1)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        channels = int(self.denoiser.config.in_channels)
        side = resolution // self.vae_scale_factor
        return channels, side, side

    def set_timesteps(self, num_steps: int, latent_shape: tuple[int, ...]) -> None:
        """The chain's timesteps; `latent_shape` (C, H, W) matters where the shift depends on it."""
        self.pipeline.scheduler.set_timesteps(num_steps, device=self.device)

    def initial_latents(self, noise: torch.Tensor) -> torch.Tensor:
        return noise * self.pipeline.scheduler.init_noise_sigma

    def step_mean_std(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor, eta: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian of one stochastic step; `eta` is the family's noise level (DDIM eta)."""
        return ddim_step_mean_std(self.pipeline.scheduler, model_output, timesteps, latents, eta)

    def step_with_logprob(
        self,
        model_output: torch.Tensor,
        timesteps: torch.Tensor,
        latents: torch.Tensor,
        eta: float,
        generator: list[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scheduler = self.pipeline.scheduler
        return ddim_step_with_logprob(
            scheduler, model_output, timesteps, latents, eta=eta, generator=generator
        )

    def predicted_x0(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor
    ) -> torch.Tensor:
        """The clean latent the model predicts from x_t: what `train_step_baseline` scores."""
        return ddim_predicted_x0(self.pipeline.scheduler, model_output, timesteps, latents)

    def forward_noise(
        self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise: the scheduler's forward process,
        which the forward-process algorithms (NFT, AWM) re-noise clean samples with."""
        abar = ddim_alpha_prod(self.pipeline.scheduler, timesteps, clean)
        return (abar.sqrt() * clean + (1 - abar).sqrt() * noise).to(clean.dtype)

    def noise_level(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The flow-matching sigma with the same signal-to-noise ratio as x_t, shaped like
        `like`: sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar)). Errors in x0 divided by it
        are errors in the flow velocity, so one loss weight means the same in every family."""
        abar = ddim_alpha_prod(self.pipeline.scheduler, timesteps, like)
        return (1 - abar).sqrt() / (abar.sqrt() + (1 - abar).sqrt())

    def deterministic_step(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor
    ) -> torch.Tensor:
        """The noise-free step used outside the SDE window (DDIM with eta = 0)."""
        t = int(timesteps.reshape(-1)[0])
        return self.pipeline.scheduler.step(model_output, t, latents, eta=0.0).prev_sample

    def token_ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        """Padded, truncated CLIP token ids, as every SD-family text encoder expects."""
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    @abstractmethod
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], resolution: int) -> PromptEmbeds:
        """Conditioning for `prompts` (the empty prompt gives the unconditional one)."""

    @torch.no_grad()
    def encode_unconditional(self, resolution: int) -> PromptEmbeds:
        """The classifier-free-guidance negative, batch of one."""
        return self.encode_prompts([""], resolution)

    def model_input(self, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The UNet's input for float32 chain latents, cast the same way in sampling and PPO.

        Trajectories stay float32 so that the log-prob is of exactly the stored latent;
        only this copy is rounded to the weight dtype, identically both times.
        """
        scaled = self.pipeline.scheduler.scale_model_input(latents, timesteps)
        return scaled.to(self.dtype)

    @abstractmethod
    def predict(
        self,
        unet: torch.nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Model output with classifier-free guidance, both halves in one batched pass.

        `unet` is passed in (not taken from the pipeline) because during training
        it is the accelerate-wrapped, adapter-carrying module.
        """

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 images (B, H, W, 3)."""
        vae = self.pipeline.vae
        scaled = latents.to(vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        images = vae.decode(scaled, return_dict=False)[0]
        images = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()


def guided(output: torch.Tensor, guidance_scale: float, has_uncond: bool) -> torch.Tensor:
    """Combine the (uncond, cond) halves of a batched prediction."""
    if not has_uncond:
        return output
    uncond, cond = output.chunk(2)
    return uncond + guidance_scale * (cond - uncond)
