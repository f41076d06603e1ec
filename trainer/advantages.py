"""Rewards -> advantages: group-relative (GRPO), per-prompt tracked (DDPO) or batch-normalised.

Which to use: with `sample_group_size` k > 1 every prompt of an epoch is
sampled k times and each sample is compared with its own group, which needs
no history and gives every prompt an unbiased baseline from the first epoch
(Flow-GRPO's choice). With k = 1 the per-prompt stat tracker compares a sample
with earlier samples of its prompt (DDPO's choice; it needs ~16 rewards per
prompt before it leaves the batch fallback). Batch normalisation treats all
prompts as one, fine for a single prompt or prompts of like difficulty.

With several rewards, `reward_aggregation = "sum"` takes the advantage of their
weighted sum; "advantages" takes each reward's advantage by the same rule
(its own groups, its own per-prompt tracker, its own batch statistics) and
sums those by weight, so a reward on a wide scale (PickScore ~20) cannot drown
one on a narrow scale (a 0-1 judge) and every reward pulls with its weight.
Pairwise preferences taken directly (`pair_score = "win_rate"`) are advantages
already: Z (2 w - 1), no statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from trainer.config import TrainConfig
from trainer.reward_client.endpoints import scorer_keys
from trainer.stat_tracker import EPS, PerPromptStatTracker, normalize_global


def group_advantages(
    rewards: np.ndarray,
    groups: np.ndarray,
    std_over: Literal["group", "batch"] = "group",
    baselines: np.ndarray | None = None,
) -> np.ndarray:
    """(r - group mean) / (std + eps), the std of the group or of the whole batch.

    Rewards that are NaN (dropped samples) get 0 and are left out of every
    statistic; a group with one scored sample gives it 0. With `baselines` (N, T)
    the advantages are per step: r - baseline, centred within the group per step
    and scaled by the same reward std (`trainer/step_baseline.py`).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    groups = np.asarray(groups)
    centred = rewards if baselines is None else rewards[:, None] - baselines
    adv = np.zeros(centred.shape, dtype=np.float32)
    ok = np.isfinite(rewards)
    if not ok.any():
        return adv
    batch_std = float(rewards[ok].std())
    for group in np.unique(groups[ok]):
        members = ok & (groups == group)
        std = float(rewards[members].std()) if std_over == "group" else batch_std
        c = centred[members]
        adv[members] = (c - c.mean(axis=0)) / (std + EPS)
    return adv


def preference_advantages(win_rates: np.ndarray, z: float) -> np.ndarray:
    """Z (2 w - 1) for win rates w of pairwise comparisons (NaN: not compared -> 0).

    No statistics: a preference is already relative. NFT's r = 1/2 + 1/2 clip(A / Z)
    is then w itself, so the image preferred in its one rated pair is wholly positive
    and the other wholly negative; PPO and AWM get the advantage at full scale.
    """
    w = np.asarray(win_rates, dtype=np.float64)
    adv = np.zeros(w.shape, dtype=np.float32)
    ok = np.isfinite(w)
    adv[ok] = z * (2.0 * w[ok] - 1.0)
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


class RewardStatTrackers(PerPromptStatTracker):
    """The tracker of the combined reward, plus one per reward for `reward_aggregation =
    "advantages"`; all of them are saved in (and restored from) one state dict.
    """

    def __init__(self, buffer_size: int, min_count: int) -> None:
        super().__init__(buffer_size, min_count)
        self.per_reward: dict[str, PerPromptStatTracker] = {}

    def for_reward(self, key: str) -> PerPromptStatTracker:
        tracker = self.per_reward.get(key)
        if tracker is None:
            tracker = self.per_reward[key] = PerPromptStatTracker(self.buffer_size, self.min_count)
        return tracker

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.per_reward:
            state["per_reward"] = {k: t.state_dict() for k, t in self.per_reward.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint from before per-reward tracking restores the combined tracker only."""
        super().load_state_dict(state)
        self.per_reward = {}
        for key, saved in (state.get("per_reward") or {}).items():
            self.for_reward(key).load_state_dict(saved)


def epoch_advantages_by_reward(
    cfg: TrainConfig,
    tracker: PerPromptStatTracker,
    prompts: Sequence[str],
    rewards: np.ndarray,
    per_scorer: Mapping[str, np.ndarray],
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The advantages to train on, and (with "advantages" aggregation) each reward's own.

    "sum": `advantages` of the combined (weighted-sum) reward; no per-reward ones.
    "advantages": sum over rewards of weight x that reward's advantage. A sample
    whose combined reward is NaN (some reward dropped it) gets 0 from every reward
    and is left out of every reward's statistics, exactly as in "sum".
    """
    keys = scorer_keys(cfg.rewards)
    direct = {k for k, ep in zip(keys, cfg.rewards, strict=True) if ep.pair_score == "win_rate"}
    valid = np.isfinite(np.asarray(rewards, dtype=np.float64))
    if cfg.reward_aggregation == "sum":
        if direct:  # then the only reward (TrainConfig checks)
            (key,) = direct
            win_rates = np.where(valid, np.asarray(per_scorer[key], dtype=np.float64), np.nan)
            return preference_advantages(win_rates, cfg.train_adv_clip_max), {}
        return advantages(cfg, tracker, list(prompts), rewards, groups), {}
    if not isinstance(tracker, RewardStatTrackers):
        raise TypeError("reward_aggregation = 'advantages' needs a RewardStatTrackers")
    weights = dict(zip(keys, (ep.weight for ep in cfg.rewards), strict=True))
    if set(per_scorer) != set(weights):
        raise ValueError(f"rewards for {sorted(per_scorer)}, weights for {sorted(weights)}")
    combined = np.zeros(len(rewards), dtype=np.float64)
    each: dict[str, np.ndarray] = {}
    for key, weight in weights.items():
        r = np.where(valid, np.asarray(per_scorer[key], dtype=np.float64), np.nan)
        if key in direct:
            each[key] = preference_advantages(r, cfg.train_adv_clip_max)
            combined += weight * each[key]
            continue
        each[key] = advantages(cfg, tracker.for_reward(key), list(prompts), r, groups)
        combined += weight * each[key]
    return combined.astype(np.float32), each
