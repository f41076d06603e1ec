"""Per-step baselines: credit each denoising step with the reward it added.

DDPO gives every step of a trajectory the same advantage, so a step that did
not change the outcome still carries the whole reward's noise. Here a step from
x_t is compared with V(x_t), the reward of the image the model's x0 prediction
at x_t decodes to (`train_step_baseline`). Subtracting a baseline that depends
only on the state before the step leaves the policy gradient unbiased (the group
mean taken from the same samples aside, as in GRPO) and removes the variance the
earlier steps already decided. What it bought on the tiny models is in
docs/learning.md ("Per-step baselines").
"""

from __future__ import annotations

import numpy as np

from trainer.advantages import group_advantages
from trainer.config import TrainConfig


def step_advantages(
    cfg: TrainConfig, rewards: np.ndarray, values: np.ndarray, groups: np.ndarray | None
) -> np.ndarray:
    """(N, T) advantages: (r - V(x_t)) centred within each group (or the batch) per step.

    The scale is the reward's std (of the group or the batch, `group_advantage_std`),
    one for all steps: a late step whose baseline already knows the outcome gets a
    small advantage instead of one blown up to unit variance. With constant values
    every column equals the plain group-relative advantage. A sample without a
    reward gets 0 everywhere; a state whose image got none takes its step's mean value.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] != rewards.shape[0]:
        raise ValueError(f"{values.shape[0]} rows of values for {rewards.shape[0]} rewards")
    if groups is None or cfg.sample_group_size == 1:
        groups = np.zeros(len(rewards), dtype=np.int64)
    known = np.isfinite(values)
    counts = known.sum(axis=0)
    col_mean = np.where(known, values, 0.0).sum(axis=0) / np.maximum(counts, 1)
    values = np.where(known, values, col_mean)
    return group_advantages(rewards, groups, cfg.group_advantage_std, baselines=values)


def baseline_figures(rewards: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """How much of the reward each step's baseline already knew, for the epoch's log.

    `step_baseline_r2_first` / `_last`: the share of the reward's variance explained by
    V(x_t) at the first and the last stochastic step (0: the baseline knows nothing yet).
    """
    ok = np.isfinite(rewards)
    r = np.asarray(rewards, dtype=np.float64)[ok]
    v = np.asarray(values, dtype=np.float64)[ok]
    out: dict[str, float] = {}
    for name, col in (("first", 0), ("last", v.shape[1] - 1)):
        x = v[:, col]
        good = np.isfinite(x)
        if good.sum() < 2 or r[good].std() == 0 or x[good].std() == 0:
            out[f"step_baseline_r2_{name}"] = 0.0
            continue
        out[f"step_baseline_r2_{name}"] = float(np.corrcoef(x[good], r[good])[0, 1] ** 2)
    return out
