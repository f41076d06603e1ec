"""What SD3 and FLUX share: a transformer predicting velocity, stepped by Flow-GRPO's SDE."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from trainer.families.base import DiffusionFamily
from trainer.flow_sde_logprob import (
    flow_ode_step,
    flow_sde_step_mean_std,
    flow_sde_step_with_logprob,
    flow_sigmas,
)

#: T5 tokens per prompt: Flow-GRPO trains SD3.5 and FLUX.1 with 128 (train_sd3.py, train_flux.py).
T5_MAX_LENGTH = 128


def t5_length(tokenizer) -> int:
    """128 T5 tokens, or fewer where the tokenizer says so (a tiny model's short prompts)."""
    return min(T5_MAX_LENGTH, int(getattr(tokenizer, "model_max_length", T5_MAX_LENGTH)))


class FlowMatchingFamily(DiffusionFamily):
    """A rectified-flow pipeline: `eta` is Flow-GRPO's noise level a of every stochastic step."""

    denoiser_name = "transformer"

    @staticmethod
    def training_scheduler(pipeline) -> FlowMatchEulerDiscreteScheduler:
        """The pipeline's own Euler flow scheduler (its shift settings are the model's)."""
        scheduler = pipeline.scheduler
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
        if scheduler.config.get("stochastic_sampling", False) or scheduler.config.get(
            "invert_sigmas", False
        ):
            raise ValueError(
                "the pipeline's flow scheduler has stochastic_sampling or invert_sigmas set; "
                "the SDE step assumes the plain Euler schedule (sigma from 1 to 0)"
            )
        return scheduler

    def model_input(self, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return latents.to(self.dtype)  # flow matching has no input scaling

    def initial_latents(self, noise: torch.Tensor) -> torch.Tensor:
        return noise  # x_1 is pure noise

    def step_mean_std(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor, eta: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_sde_step_mean_std(
            self.pipeline.scheduler, model_output, timesteps, latents, eta
        )

    def step_with_logprob(
        self,
        model_output: torch.Tensor,
        timesteps: torch.Tensor,
        latents: torch.Tensor,
        eta: float,
        generator: list[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_sde_step_with_logprob(
            self.pipeline.scheduler, model_output, timesteps, latents, eta, generator=generator
        )

    def predicted_x0(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor
    ) -> torch.Tensor:
        """x_0 = x_t - sigma v (x_t = (1 - sigma) x_0 + sigma noise, v = noise - x_0)."""
        sigma, _ = flow_sigmas(self.pipeline.scheduler, timesteps, latents)
        return (latents.double() - sigma * model_output.double()).to(latents.dtype)

    def forward_noise(
        self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_s = (1 - s) x_0 + s noise, s the sigma of each timestep in the set schedule."""
        sigma = self.noise_level(timesteps, clean)
        return ((1 - sigma) * clean + sigma * noise).to(clean.dtype)

    def noise_level(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The sigma itself (float64, shaped like `like`)."""
        return flow_sigmas(self.pipeline.scheduler, timesteps, like)[0]

    def deterministic_step(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor
    ) -> torch.Tensor:
        return flow_ode_step(self.pipeline.scheduler, model_output, timesteps, latents)
