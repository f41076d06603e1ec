"""The SDE window: where it lies per batch and epoch, and the config that bounds it."""

import pytest

from trainer.config import ConfigError, build_config
from trainer.ppo import trained_steps_per_sample
from trainer.sde_window import sde_window

BASE = {
    "pretrained_model": "m",
    "train_algorithm": "ppo",
    "prompts": ["a"],
    "rewards": [{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
    "sample_num_steps": 10,
}


def cfg(**kw):
    return build_config({**BASE, **kw})


def test_no_window_is_the_whole_chain():
    assert sde_window(cfg(), 3, 0, 1) == range(10)


def test_random_window_stays_in_its_range_covers_it_and_repeats_for_a_place():
    c = cfg(sample_sde_window_size=3, sample_sde_window_range=[0, 5], seed=7)
    starts = {sde_window(c, e, r, b).start for e in range(20) for r in range(2) for b in range(2)}
    assert starts == {0, 1, 2}  # start + 3 <= 5, every start drawn over 80 batches
    assert all(len(sde_window(c, e, 0, 0)) == 3 for e in range(5))
    assert sde_window(c, 4, 1, 1) == sde_window(c, 4, 1, 1)  # a resume sees the same window
    other_seed = c.model_copy(update={"seed": 8})
    assert [sde_window(c, e, 0, 0) for e in range(10)] != [
        sde_window(other_seed, e, 0, 0) for e in range(10)
    ]


def test_sliding_window_moves_every_n_epochs_and_wraps():
    c = cfg(
        sample_sde_window_size=2, sample_sde_window_range=[1, 5], sample_sde_window_shift_every=2
    )
    starts = [sde_window(c, e, 0, b).start for e in range(8) for b in (0,)]
    assert starts == [1, 1, 2, 2, 3, 3, 1, 1]  # positions 1..3 (start + 2 <= 5), then back


def test_only_the_window_is_trained():
    assert trained_steps_per_sample(cfg(sample_sde_window_size=3)) == 3
    assert trained_steps_per_sample(cfg(train_timestep_fraction=0.5)) == 5


@pytest.mark.parametrize(
    "bad",
    [
        {"sample_sde_window_size": 11},
        {"sample_sde_window_size": 3, "sample_sde_window_range": [0, 2]},
        {"sample_sde_window_size": 2, "sample_sde_window_range": [4, 12]},
    ],
)
def test_a_window_that_does_not_fit_is_refused(bad):
    with pytest.raises(ConfigError, match="sample_sde_window_size"):
        cfg(**bad)
