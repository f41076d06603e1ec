"""One flow-matching step as a Gaussian with an exact log-density (Flow-GRPO's SDE).

A rectified-flow model predicts the velocity v = eps - x0 of x_s = (1 - s) x0 + s eps.
Its Euler ODE step x + (s' - s) v is deterministic. The reverse-time SDE

    dx = [v + a^2 / 2 (x + (1 - s) v) / (1 - s)] ds + a sqrt(s / (1 - s)) dW

has the same marginals for any noise level a (the drift adds the score term
-(x + (1 - s) v) / s times half the squared diffusion). One Euler-Maruyama step
of it from s to s' < s is Gaussian with

    mean = x (1 + g^2 dt / (2 s)) + v (1 + g^2 (1 - s) / (2 s)) dt,
    std  = g sqrt(-dt),   g = a sqrt(s / (1 - s)),   dt = s' - s,

(Flow-GRPO, arXiv 2505.05470). At s = 1 the ratio s / (1 - s) is infinite;
Flow-GRPO evaluates 1 - s at the schedule's second sigma there, and so do we.
The log-density is averaged over latent dimensions like `ddim_step_with_logprob`,
so PPO's clip range means the same for every family.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from trainer.ddim_logprob import _randn_like, gaussian_log_prob


def _step_indices(scheduler: FlowMatchEulerDiscreteScheduler, timestep, like: torch.Tensor):
    """The schedule index of each sample's timestep (float timesteps, matched to 1e-3)."""
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    schedule = scheduler.timesteps.to(like.device, torch.float64)
    t = torch.as_tensor(timestep, device=like.device).to(torch.float64).reshape(-1)
    if t.numel() == 1:
        t = t.expand(like.shape[0])
    gap, index = (schedule[None, :] - t[:, None]).abs().min(dim=1)
    if bool((gap > 1e-3).any()):
        raise ValueError(
            f"timestep(s) {t[gap > 1e-3].tolist()} are not in the scheduler's timesteps: set "
            "the same timesteps (num_steps, shift / mu) as when the chain was sampled"
        )
    return index


def flow_sigmas(scheduler, timestep, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma, next sigma) per sample, float64, shaped to broadcast over `like`."""
    index = _step_indices(scheduler, timestep, like)
    sigmas = scheduler.sigmas.to(like.device, torch.float64)
    shape = (-1, *([1] * (like.ndim - 1)))
    return sigmas[index].reshape(shape), sigmas[index + 1].reshape(shape)


def flow_sde_step_mean_std(
    scheduler: FlowMatchEulerDiscreteScheduler,
    model_output: torch.Tensor,
    timestep: float | torch.Tensor,
    sample: torch.Tensor,
    noise_level: float = 0.7,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of one SDE step; the std depends on the timestep alone (closed-form KL)."""
    if noise_level <= 0:
        raise ValueError(
            f"noise_level must be > 0 (got {noise_level}): at 0 the flow step is the "
            "deterministic ODE and a transition has no log-probability to optimise"
        )
    sigma, sigma_next = flow_sigmas(scheduler, timestep, sample)
    dt = sigma_next - sigma
    second = scheduler.sigmas[1].item() if len(scheduler.sigmas) > 1 else 0.0
    one_minus = 1 - torch.where(sigma >= 1, torch.full_like(sigma, second), sigma)
    g2 = noise_level**2 * sigma / one_minus  # squared diffusion coefficient
    keep = (1 + g2 * dt / (2 * sigma)).to(sample.dtype)
    drift = ((1 + g2 * (1 - sigma) / (2 * sigma)) * dt).to(sample.dtype)
    mean = sample * keep + model_output.to(sample.dtype) * drift
    std = (g2 * -dt).sqrt().to(sample.dtype)
    if bool((std <= 0).any()):
        raise ValueError("a flow step has zero variance (two equal sigmas in the schedule)")
    return mean, std


def flow_sde_step_with_logprob(
    scheduler: FlowMatchEulerDiscreteScheduler,
    model_output: torch.Tensor,
    timestep: float | torch.Tensor,
    sample: torch.Tensor,
    noise_level: float = 0.7,
    generator: torch.Generator | list[torch.Generator] | None = None,
    prev_sample: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Take one SDE step and return `(prev_sample, log_prob)`, log_prob of shape (batch,).

    With `prev_sample` given no noise is drawn and its log-density is returned (PPO's
    re-scoring). Works for static shift and dynamic shifting alike: the sigmas are the
    scheduler's own, as `set_timesteps` (with `mu` where dynamic) left them.
    """
    mean, std = flow_sde_step_mean_std(scheduler, model_output, timestep, sample, noise_level)
    if prev_sample is None:
        prev_sample = mean + std * _randn_like(mean, generator)
    return prev_sample.type(sample.dtype), gaussian_log_prob(prev_sample, mean, std)


def flow_ode_step(
    scheduler: FlowMatchEulerDiscreteScheduler,
    model_output: torch.Tensor,
    timestep: float | torch.Tensor,
    sample: torch.Tensor,
) -> torch.Tensor:
    """The deterministic Euler step x + (s' - s) v, for steps outside the SDE window."""
    sigma, sigma_next = flow_sigmas(scheduler, timestep, sample)
    return sample + model_output.to(sample.dtype) * (sigma_next - sigma).to(sample.dtype)
