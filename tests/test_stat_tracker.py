"""PerPromptStatTracker and normalize_global against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainer.stat_tracker import EPS, PerPromptStatTracker, normalize_global


def approx(values: list[float]) -> object:
    return pytest.approx(values, rel=1e-5, abs=1e-6)


def test_buffer_overflow_drops_oldest() -> None:
    t = PerPromptStatTracker(buffer_size=3, min_count=1)
    # buffer [1, 2]: mean 1.5, std 0.5
    assert t.update(["a", "a"], np.array([1.0, 2.0])).tolist() == approx([-1.0, 1.0])
    # buffer [2, 3, 4] (1 dropped): mean 3, std sqrt(2/3)
    std = math.sqrt(2 / 3)
    assert t.update(["a", "a"], np.array([3.0, 4.0])).tolist() == approx([0.0, 1 / std])
    assert t.state_dict()["buffers"] == {"a": [2.0, 3.0, 4.0]}
    assert t.stats() == {"num_prompts": 1, "mean_buffer_len": 3.0}


def test_min_count_falls_back_to_batch_stats() -> None:
    t = PerPromptStatTracker(buffer_size=32, min_count=4)
    rewards = np.array([0.0, 2.0, 10.0, 20.0])
    # both buffers hold 2 < 4: batch mean 8, std sqrt((64 + 36 + 4 + 144) / 4)
    std = math.sqrt(62.0)
    expected = [(r - 8.0) / std for r in rewards]
    assert t.update(["a", "a", "b", "b"], rewards).tolist() == approx(expected)
    # now 4 each: a = [0, 2, 0, 2] (mean 1, std 1), b = [10, 20, 10, 20] (mean 15, std 5)
    out = t.update(["a", "a", "b", "b"], rewards)
    assert out.dtype == np.float32
    assert out.tolist() == approx([-1.0, 1.0, -1.0, 1.0])


def test_prompts_are_independent_and_order_is_kept() -> None:
    t = PerPromptStatTracker(buffer_size=32, min_count=1)
    out = t.update(["a", "b", "a", "b"], np.array([1.0, 100.0, 3.0, 300.0]))
    assert out.tolist() == approx([-1.0, -1.0, 1.0, 1.0])
    assert t.stats() == {"num_prompts": 2, "mean_buffer_len": 2.0}
    t.clear()
    assert t.stats() == {"num_prompts": 0, "mean_buffer_len": 0.0}


def test_constant_reward_gives_zero_advantage() -> None:
    t = PerPromptStatTracker(buffer_size=4, min_count=1)
    assert t.update(["a"] * 3, np.full(3, 0.7, dtype=np.float32)).tolist() == [0.0, 0.0, 0.0]


def test_normalize_global() -> None:
    std = math.sqrt(2 / 3)
    out = normalize_global(np.array([1.0, 2.0, 3.0]))
    assert out.dtype == np.float32
    assert out.tolist() == approx([-1 / (std + EPS), 0.0, 1 / (std + EPS)])


def test_rejects_bad_input() -> None:
    t = PerPromptStatTracker(buffer_size=4, min_count=1)
    with pytest.raises(ValueError, match="2 prompts but 3 rewards"):
        t.update(["a", "b"], np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        t.update(["a"], np.array([np.nan]))
    with pytest.raises(ValueError, match="buffer_size"):
        PerPromptStatTracker(buffer_size=0, min_count=1)


def test_state_round_trip_through_json_is_exact() -> None:
    rng = np.random.default_rng(0)
    prompts = ["cat", "dog", "a red circle"]

    def batch() -> tuple[list[str], np.ndarray]:
        ps = [prompts[i] for i in rng.integers(0, 3, size=8)]
        return ps, rng.normal(size=8).astype(np.float32)

    original = PerPromptStatTracker(buffer_size=5, min_count=3)
    for _ in range(4):
        original.update(*batch())

    restored = PerPromptStatTracker(buffer_size=5, min_count=3)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.state_dict() == original.state_dict()
    for _ in range(3):
        ps, rs = batch()
        assert np.array_equal(original.update(ps, rs), restored.update(ps, rs))


def test_load_into_smaller_buffer_keeps_newest() -> None:
    big = PerPromptStatTracker(buffer_size=5, min_count=1)
    big.update(["a"] * 5, np.arange(5.0))
    small = PerPromptStatTracker(buffer_size=2, min_count=1)
    small.load_state_dict(big.state_dict())
    assert small.state_dict()["buffers"] == {"a": [3.0, 4.0]}
    with pytest.raises(ValueError, match="version"):
        small.load_state_dict({"buffers": {}})
