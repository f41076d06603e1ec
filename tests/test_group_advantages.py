"""Group sampling and group-relative advantages (GRPO), against hand computations."""

import numpy as np
import pytest

from tests.test_ppo import _config
from trainer.advantages import advantages, group_advantages
from trainer.prompt_schedule import batch_prompt_ids, check_group_layout, group_ids
from trainer.stat_tracker import EPS, PerPromptStatTracker


def test_group_advantages_by_hand():
    rewards = np.array([1.0, 3.0, 10.0, 10.0, 4.0, 6.0])
    groups = np.array([0, 0, 1, 1, 2, 2])
    adv = group_advantages(rewards, groups, "group")
    # group 0: mean 2, std 1; group 1: constant -> 0; group 2: mean 5, std 1
    np.testing.assert_allclose(adv, [-1 / (1 + EPS), 1 / (1 + EPS), 0, 0, -1, 1], atol=1e-5)
    batch_std = rewards.std()
    adv = group_advantages(rewards, groups, "batch")
    np.testing.assert_allclose(
        adv, np.array([-1, 1, 0, 0, -1, 1]) / (batch_std + EPS), rtol=1e-6, atol=1e-7
    )


def test_dropped_samples_are_left_out_of_their_group():
    rewards = np.array([1.0, np.nan, 5.0, 2.0, np.nan, np.nan])
    adv = group_advantages(rewards, np.array([0, 0, 0, 1, 1, 1]))
    # group 0 is {1, 5}: mean 3, std 2; group 1 has one scored sample: 0
    np.testing.assert_allclose(adv, [-1, 0, 1, 0, 0, 0], atol=1e-5)


def test_trainer_uses_groups_when_k_above_one():
    cfg = _config(sample_group_size=2, per_prompt_stat_tracking=True)
    tracker = PerPromptStatTracker(32, 1)
    rewards = np.array([0.0, 2.0, 5.0, 7.0], dtype=np.float32)
    adv = advantages(cfg, tracker, ["a", "a", "a", "a"], rewards, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(adv, [-1, 1, -1, 1], atol=1e-5)
    assert tracker.state_dict()["buffers"] == {}  # the tracker is not used with groups


def test_each_prompt_appears_k_times_with_distinct_seeds_across_ranks():
    cfg = _config(sample_group_size=4, sample_batch_size=2, sample_num_batches_per_epoch=2, seed=3)
    world = 3  # 12 samples per epoch: 3 groups of 4, spanning batches and ranks
    check_group_layout(cfg, world)
    ids = [
        pid
        for rank in range(world)
        for b in range(cfg.sample_num_batches_per_epoch)
        for pid in batch_prompt_ids(cfg, 5, epoch=0, rank=rank, world_size=world, batch=b)
    ]
    groups = group_ids(cfg, 0, len(ids))
    assert groups.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for g in range(3):
        assert len({ids[i] for i in range(len(ids)) if groups[i] == g}) == 1
    assert len({ids[0], ids[4], ids[8]}) == 3  # no prompt twice while the list lasts
    again = batch_prompt_ids(cfg, 5, epoch=0, rank=1, world_size=world, batch=1)
    assert again == ids[6:8]  # the same on every call: every rank agrees, resumes repeat it
    layouts = {
        tuple(batch_prompt_ids(cfg, 5, epoch, r, world, 0)[0] for r in range(world))
        for epoch in range(10)
    }
    assert len(layouts) > 1  # each epoch draws its own prompts


def test_group_layout_that_does_not_tile_the_epoch_is_refused():
    cfg = _config(sample_group_size=5, sample_batch_size=2, sample_num_batches_per_epoch=2)
    with pytest.raises(ValueError, match=r"sample_group_size \(5\) must divide .* \(8 = 2"):
        check_group_layout(cfg, 2)
