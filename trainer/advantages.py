"""Rewards -> advantages: group-relative (GRPO), per-prompt tracked (DDPO) or batch-normalised.

Which to use: with `sample_group_size` k > 1 every prompt of an epoch is
sampled k times and each sample is compared with its own group, which needs
no history and gives every prompt an unbiased baseline from the first epoch
(Flow-GRPO's choice). With k = 1 the per-prompt stat tracker compares a sample
with earlier samples of its prompt (DDPO's choice; it needs ~16 rewards per
prompt before it leaves the batch fallback). Batch normalisation treats all
prompts as one, fine for a single prompt or prompts of like difficulty.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from trainer.config import TrainConfig
from trainer.stat_tracker import EPS, PerPromptStatTracker, normalize_global


def group_advantages(
    rewards: np.ndarray, groups: np.ndarray, std_over: Literal["group", "batch"] = "group"
) -> np.ndarray:
    """(r - group mean) / (std + eps), the std of the group or of the whole batch.

    Rewards that are NaN (dropped samples) get 0 and are left out of every
    statistic; a group with one scored sample gives it 0.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    groups = np.asarray(groups)
    adv = np.zeros(rewards.shape, dtype=np.float32)
    ok = np.isfinite(rewards)
    if not ok.any():
        return adv
    batch_std = float(rewards[ok].std())
    for group in np.unique(groups[ok]):
        members = ok & (groups == group)
        r = rewards[members]
        std = float(r.std()) if std_over == "group" else batch_std
        adv[members] = (r - r.mean()) / (std + EPS)
    return adv


def advantages(
    cfg: TrainConfig,
    tracker: PerPromptStatTracker,
    prompts: list[str],
    rewards: np.ndarray,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised advantages of an epoch's samples (all ranks, in global order).

    Samples without a reward (NaN: dropped) get 0: they stay in the PPO batch,
    exert no gradient, and every rank keeps the same number of train batches
    (DDP needs that). With `sample_group_size` > 1, `groups` gives each sample's
    group and advantages are group-relative; the tracker is not used then.
    """
    if cfg.sample_group_size > 1:
        if groups is None:
            raise ValueError("sample_group_size > 1 needs each sample's group")
        return group_advantages(rewards, groups, cfg.group_advantage_std)
    adv = np.zeros(len(rewards), dtype=np.float32)
    ok = np.isfinite(rewards)
    if not ok.any():
        return adv
    if cfg.per_prompt_stat_tracking:
        adv[ok] = tracker.update([p for p, k in zip(prompts, ok, strict=True) if k], rewards[ok])
    else:
        adv[ok] = normalize_global(rewards[ok])
    return adv
