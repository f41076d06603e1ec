import numpy as np

from tests.test_ppo import _config
from trainer.advantages import advantages
from trainer.stat_tracker import PerPromptStatTracker


def test_dropped_samples_get_zero_advantage_and_do_not_touch_stats():
    cfg = _config(per_prompt_stat_tracking=True, per_prompt_stat_tracking_min_count=2)
    tracker = PerPromptStatTracker(32, 2)
    rewards = np.array([1.0, np.nan, 3.0, 5.0, np.nan], dtype=np.float32)
    prompts = ["a", "a", "a", "b", "b"]
    adv = advantages(cfg, tracker, prompts, rewards)
    assert adv[1] == 0 and adv[4] == 0
    assert adv[0] < 0 < adv[2]  # prompt "a": rewards 1 and 3 normalised against each other
    assert tracker.state_dict()["buffers"]["a"] == [1.0, 3.0]
    assert np.isfinite(adv).all()


def test_global_normalisation_and_all_dropped():
    cfg = _config(per_prompt_stat_tracking=False)
    tracker = PerPromptStatTracker(32, 2)
    adv = advantages(cfg, tracker, ["a"] * 3, np.array([0.0, 2.0, np.nan], dtype=np.float32))
    np.testing.assert_allclose(adv[:2], [-1.0, 1.0], atol=1e-5)
    assert adv[2] == 0
    assert not advantages(cfg, tracker, ["a"], np.array([np.nan], dtype=np.float32)).any()
