"""Several rewards: advantages of the weighted sum, or the weighted sum of each one's advantages."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.test_ppo import _config
from trainer.advantages import (
    RewardStatTrackers,
    advantages,
    epoch_advantages_by_reward,
    group_advantages,
)
from trainer.reward_client import RewardResult

TWO = [
    {"url": "http://a", "scorer": "pickscore", "weight": 1.0},
    {"url": "http://b", "scorer": "vlm_judge", "weight": 2.0},
]
# PickScore-like (wide scale) and a 0-1 judge that disagree on which sample is better.
PICK = np.array([20.0, 23.0, 21.0, 22.0])
JUDGE = np.array([0.9, 0.1, 0.6, 0.5])
GROUPS = np.array([0, 0, 1, 1])


def _combined(weights: tuple[float, float] = (1.0, 2.0)) -> np.ndarray:
    return (weights[0] * PICK + weights[1] * JUDGE).astype(np.float32)


def test_sum_is_the_advantage_of_the_weighted_sum() -> None:
    cfg = _config(rewards=TWO, sample_group_size=2)
    tracker = RewardStatTrackers(32, 1)
    per = {"pickscore": PICK, "vlm_judge": JUDGE}
    adv, each = epoch_advantages_by_reward(cfg, tracker, ["p"] * 4, _combined(), per, GROUPS)
    np.testing.assert_allclose(adv, group_advantages(_combined(), GROUPS), atol=1e-6)
    assert each == {}
    assert adv[1] > 0  # PickScore's 3-point spread outweighs the judge's 0.8


def test_advantages_weights_each_reward_normalised_alone() -> None:
    cfg = _config(rewards=TWO, sample_group_size=2, reward_aggregation="advantages")
    tracker = RewardStatTrackers(32, 1)
    per = {"pickscore": PICK, "vlm_judge": JUDGE}
    adv, each = epoch_advantages_by_reward(cfg, tracker, ["p"] * 4, _combined(), per, GROUPS)
    a_pick, a_judge = group_advantages(PICK, GROUPS), group_advantages(JUDGE, GROUPS)
    np.testing.assert_allclose(each["pickscore"], a_pick, atol=1e-6)
    np.testing.assert_allclose(each["vlm_judge"], a_judge, atol=1e-6)
    np.testing.assert_allclose(adv, a_pick + 2.0 * a_judge, atol=1e-5)
    assert adv[1] < 0  # now the judge, weighted 2, wins sample 1's group


def test_per_prompt_trackers_per_reward_and_their_checkpoint() -> None:
    cfg = _config(
        rewards=TWO,
        reward_aggregation="advantages",
        per_prompt_stat_tracking=True,
        per_prompt_stat_tracking_min_count=2,
    )
    tracker = RewardStatTrackers(32, 2)
    prompts = ["a", "a", "b", "b"]
    rewards = _combined()
    rewards[3] = np.nan  # dropped by one reward: out of every reward's statistics
    per = {"pickscore": PICK, "vlm_judge": JUDGE}
    adv, each = epoch_advantages_by_reward(cfg, tracker, prompts, rewards, per)
    assert adv[3] == 0 and each["pickscore"][3] == 0
    state = tracker.state_dict()
    assert state["per_reward"]["pickscore"]["buffers"] == {"a": [20.0, 23.0], "b": [21.0]}
    assert state["per_reward"]["vlm_judge"]["buffers"]["a"] == pytest.approx([0.9, 0.1])
    assert state["buffers"] == {}  # the combined reward's tracker is not fed in this mode
    # Each reward against its own history: a fresh one restored from the state agrees.
    restored = RewardStatTrackers(32, 2)
    restored.load_state_dict(state)
    again = [
        epoch_advantages_by_reward(cfg, t, prompts, rewards, per)[0] for t in (tracker, restored)
    ]
    np.testing.assert_array_equal(again[0], again[1])
    expected = advantages(
        cfg, RewardStatTrackers(32, 2), prompts[:2], PICK[:2].astype(np.float32)
    ) + 2 * advantages(cfg, RewardStatTrackers(32, 2), prompts[:2], JUDGE[:2].astype(np.float32))
    np.testing.assert_allclose(adv[:2], expected, atol=1e-5)


def test_old_checkpoints_restore_and_mismatched_rewards_are_refused() -> None:
    old = RewardStatTrackers(32, 1)
    old.update(["a"], np.array([1.0]))
    state = old.state_dict()
    assert "per_reward" not in state
    new = RewardStatTrackers(32, 1)
    new.load_state_dict(state)
    assert new.state_dict()["buffers"] == {"a": [1.0]} and new.per_reward == {}
    cfg = _config(rewards=TWO, reward_aggregation="advantages")
    with pytest.raises(ValueError, match="weights for"):
        epoch_advantages_by_reward(cfg, new, ["a"], np.ones(1), {"pickscore": np.ones(1)})


def test_epoch_figures_per_reward() -> None:
    """Through train.epoch_advantages on one CPU process: the curves metrics.jsonl (and so
    TensorBoard, which gets every numeric key of a record) receive."""
    from accelerate import Accelerator

    from trainer.train import epoch_advantages

    cfg = _config(
        rewards=TWO,
        prompts=["p", "q"],
        sample_group_size=2,
        sample_batch_size=2,
        sample_num_batches_per_epoch=2,
        reward_aggregation="advantages",
    )
    run = SimpleNamespace(
        cfg=cfg,
        accelerator=Accelerator(cpu=True),
        tracker=RewardStatTrackers(32, 1),
        prompts=["p", "q"],
        rank=0,
    )
    result = RewardResult(
        rewards=_combined(),
        per_scorer={"pickscore": PICK.astype(np.float32), "vlm_judge": JUDGE.astype(np.float32)},
        wait_s=0.0,
    )
    trajs = SimpleNamespace(prompt_ids=torch.tensor([0, 0, 1, 1]))
    adv, figures = epoch_advantages(run, trajs, result)
    expected = group_advantages(PICK, GROUPS) + 2 * group_advantages(JUDGE, GROUPS)
    np.testing.assert_allclose(adv.numpy(), expected, atol=1e-5)
    assert figures["reward_vlm_judge_mean"] == pytest.approx(JUDGE.mean())
    assert figures["reward_pickscore_std"] == pytest.approx(PICK.std())
    assert figures["advantage_pickscore_abs_mean"] == pytest.approx(1.0, abs=1e-4)
