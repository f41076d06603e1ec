"""One DDIM step that also returns the exact log-density of the transition.

DDPO's policy is the Gaussian of each stochastic DDIM step (eta > 0). The
log-density is averaged over latent dimensions, as in DDPO's reference code,
so the reference clip range (1e-4) keeps its meaning.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _per_sample(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather a schedule value for each sample's timestep, shaped to broadcast over `like`."""
    out = values.to(like.device)[t.to(like.device).long()]
    return out.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def _split_prediction(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 estimate, epsilon estimate) for any of diffusers' prediction types."""
    beta_prod_t = 1 - alpha_prod_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        eps = model_output
        x0 = (sample - beta_prod_t.sqrt() * eps) / alpha_prod_t.sqrt()
    elif kind == "sample":
        x0 = model_output
        eps = (sample - alpha_prod_t.sqrt() * x0) / beta_prod_t.sqrt()
    elif kind == "v_prediction":
        x0 = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
        eps = alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample
    else:
        raise ValueError(
            f"prediction_type {kind!r} is not supported; use epsilon, sample or v_prediction"
        )
    return x0, eps


def ddim_alpha_prod(scheduler: DDIMScheduler, timestep, like: torch.Tensor) -> torch.Tensor:
    """alpha_cumprod of each sample's timestep (float64), shaped to broadcast over `like`."""
    t = torch.as_tensor(timestep, device=like.device).long().reshape(-1)
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    alpha = alphas.to(like.device)[t.expand(like.shape[0]) if t.numel() == 1 else t]
    return alpha.reshape(-1, *([1] * (like.ndim - 1)))


def ddim_predicted_x0(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor,
    sample: torch.Tensor,
) -> torch.Tensor:
    """The model's estimate of the clean latent from x_t (before thresholding or clipping)."""
    t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    alpha_prod_t = _per_sample(alphas, t.expand(sample.shape[0]) if t.numel() == 1 else t, sample)
    return _split_prediction(scheduler, model_output, sample, alpha_prod_t)[0]


def ddim_step_mean_std(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the Gaussian of one DDIM step x_t -> x_{t-1}.

    The std depends on the timestep alone, so two models' step distributions
    differ only in the mean: the KL to a reference needs nothing more.
    """
    if eta <= 0:
        raise ValueError(
            f"eta must be > 0 for DDPO (got {eta}): with eta = 0 DDIM is deterministic and a "
            "transition has no log-probability to optimise"
        )
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")

    batch = sample.shape[0]
    t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev_t = t - step

    alphas = scheduler.alphas_cumprod.to(torch.float64)
    # prev_t < 0 means the last step: alpha of the final clean sample.
    alphas_ext = torch.cat([alphas, torch.as_tensor([scheduler.final_alpha_cumprod]).double()])
    prev_index = torch.where(prev_t >= 0, prev_t, torch.full_like(prev_t, len(alphas)))
    alpha_prod_t = _per_sample(alphas, t, sample)
    alpha_prod_prev = _per_sample(alphas_ext, prev_index, sample)
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_prev = 1 - alpha_prod_prev

    x0, eps = _split_prediction(scheduler, model_output, sample, alpha_prod_t)
    if scheduler.config.thresholding:
        x0 = scheduler._threshold_sample(x0)
    elif scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)

    variance = (beta_prod_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)
    std = eta * variance.clamp(min=0).sqrt()
    if bool((std <= 0).any()):
        raise ValueError(
            "a DDIM step has zero variance (final alpha_cumprod = 1): its log-probability is "
            "undefined; build the scheduler with set_alpha_to_one=False"
        )
    direction = (1 - alpha_prod_prev - std**2).clamp(min=0).sqrt() * eps
    mean = alpha_prod_prev.sqrt() * x0 + direction
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample log-density of `x`, averaged over latent dimensions (DDPO's convention)."""
    log_prob = -((x.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    prev_sample: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Take one DDIM step x_t -> x_{t-1} and return `(prev_sample, log_prob)`.

    With `prev_sample` given, no noise is drawn: the log-density of that given
    transition is returned, which is how PPO re-evaluates stored trajectories.
    `timestep` may be a scalar or one timestep per sample. `log_prob` has shape
    (batch,) and is the mean over latent dimensions of the Gaussian log-density.
    """
    mean, std = ddim_step_mean_std(scheduler, model_output, timestep, sample, eta)
    if prev_sample is None:
        noise = _randn_like(model_output, generator)
        prev_sample = mean + std * noise
    log_prob = gaussian_log_prob(prev_sample, mean, std)
    return prev_sample.type(sample.dtype), log_prob


def _randn_like(
    like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None
) -> torch.Tensor:
    """Noise that is reproducible per sample when one generator per sample is given."""
    if isinstance(generator, list):
        parts = [
            torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype)
            for g in generator
        ]
        return torch.stack(parts).to(like.device)
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(
        like.device
    )
