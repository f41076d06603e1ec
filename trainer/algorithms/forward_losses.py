"""The per-entry losses of DiffusionNFT and AWM, written in x0 for every model family.

An entry is one clean sample x0 re-noised at one timestep: x_t from the scheduler's
forward process, s the flow sigma with x_t's signal-to-noise ratio (`noise_level`).
At fixed x_t and t a family's predicted x0 is affine in its prediction (epsilon, v
or flow velocity), so mixing predictions (NFT's implicit policies) and measuring
errors in x0 give the same loss whichever the model predicts; dividing x0 errors
by s turns them into flow-velocity errors, the space both papers write their
losses in (docs/learning.md).
"""

from __future__ import annotations

import torch

from trainer.ppo import PPOStats, ppo_loss

_FLOOR = 1e-5  # NFT's floor of the adaptive weight
_HUBER_EPS = 1e-10  # AWM's offset inside the generalised Huber weight


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def optimality_probability(advantages: torch.Tensor, z: float) -> torch.Tensor:
    """NFT's r = 1/2 + 1/2 clip(A / Z, -1, 1): the probability a sample is "positive"."""
    return 0.5 + 0.5 * (advantages / z).clamp(-1.0, 1.0)


def nft_loss(
    x0_pos: torch.Tensor,
    x0_neg: torch.Tensor,
    x0: torch.Tensor,
    r: torch.Tensor,
    beta: float,
    z: float,
) -> torch.Tensor:
    """Per-entry Z (r L+ + (1 - r) L-) / beta, L+- = mean (x0+- - x0)^2 / stopgrad mean |x0+- - x0|.

    x0+- are the clean latents the implicit policies predict. The adaptive weight
    (a floor of 1e-5) and the factor Z / beta are the authors' script's.
    """
    losses = []
    for pred in (x0_pos, x0_neg):
        err = pred.float() - x0.float()
        weight = _mean(err.detach().abs()).clamp(min=_FLOOR)
        losses.append(_mean(err**2) / weight)
    return z * (r * losses[0] + (1 - r) * losses[1]) / beta


def velocity_sq_error(x0_a: torch.Tensor, x0_b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per-entry mean ((x0_a - x0_b) / s)^2: the squared flow-velocity difference."""
    return _mean(((x0_a.double() - x0_b.double()) / s) ** 2).float()


def awm_log_prob(
    x0_pred: torch.Tensor, x0: torch.Tensor, s: torch.Tensor, power: float | None
) -> torch.Tensor:
    """AWM's log-likelihood surrogate: -l, l the velocity-matching loss of the entry,
    or with `power` p its generalised Huber form s ((l + 1e-10)^p - 1e-10^p) / p."""
    loss = velocity_sq_error(x0_pred, x0, s)
    if power is None:
        return -loss
    s_flat = s.reshape(-1).float()
    return -s_flat * ((loss + _HUBER_EPS) ** power - _HUBER_EPS**power) / power


def awm_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    z: float,
) -> PPOStats:
    """PPO's clipped objective on AWM's log-prob, the advantage clipped to +-Z and divided
    by Z (the authors' advantage_max 1). At the sampling weights the ratio is 1 and the
    gradient is -A / Z grad log_prob: the advantage-weighted denoising gradient."""
    return ppo_loss(log_prob, old_log_prob, advantages / z, clip_range, 1.0)
