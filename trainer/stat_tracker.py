"""Reward -> advantage normalisation for DDPO.

Per-prompt tracking compares each sample with earlier samples of the same
prompt, so an easy prompt's high rewards don't drown out progress on a hard
one. Until a prompt has `min_count` rewards its own statistics are too noisy,
so the whole batch's statistics stand in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Added to the standard deviation so a constant reward gives 0, not NaN.
EPS = 1e-6

_STATE_VERSION = 1


def _as_rewards(rewards: np.ndarray) -> np.ndarray:
    """Float64 1-D copy; non-finite rewards would poison every later advantage, so refuse them."""
    arr = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError("rewards contain NaN or inf")
    return arr


def normalize_global(rewards: np.ndarray) -> np.ndarray:
    """Advantages from the batch's own mean and std (the non-tracking option)."""
    r = _as_rewards(rewards)
    if r.size == 0:
        return r.astype(np.float32)
    return ((r - r.mean()) / (r.std() + EPS)).astype(np.float32)


class PerPromptStatTracker:
    """Keeps the last `buffer_size` rewards of every prompt and normalises against them."""

    def __init__(self, buffer_size: int, min_count: int) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self._buffers: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        """Record this batch's rewards and return their advantages (float32, same order).

        Every prompt's buffer is extended before its statistics are taken, so a
        sample is compared with its batch-mates of the same prompt too.
        """
        r = _as_rewards(rewards)
        prompts = list(prompts)
        if len(prompts) != r.size:
            raise ValueError(f"{len(prompts)} prompts but {r.size} rewards")
        advantages = np.empty_like(r)
        if r.size == 0:
            return advantages.astype(np.float32)
        batch_mean, batch_std = r.mean(), r.std()

        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(i)

        for prompt, idx in groups.items():
            buf = self._buffers.get(prompt)
            if buf is None:
                buf = self._buffers[prompt] = deque(maxlen=self.buffer_size)
            buf.extend(float(x) for x in r[idx])
            if len(buf) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                values = np.fromiter(buf, dtype=np.float64, count=len(buf))
                mean, std = values.mean(), values.std()
            advantages[idx] = (r[idx] - mean) / (std + EPS)
        return advantages.astype(np.float32)

    def stats(self) -> dict[str, float]:
        """Figures worth logging: how many prompts are tracked and how full their buffers are."""
        n = len(self._buffers)
        mean_len = float(np.mean([len(b) for b in self._buffers.values()])) if n else 0.0
        return {"num_prompts": n, "mean_buffer_len": mean_len}

    def clear(self) -> None:
        self._buffers.clear()

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable state; Python floats round-trip through JSON exactly."""
        return {
            "version": _STATE_VERSION,
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "buffers": {prompt: list(buf) for prompt, buf in self._buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore buffers saved by `state_dict`.

        The constructor's buffer_size and min_count stay in force (the config
        is authoritative on resume); a longer saved buffer keeps its newest
        entries.
        """
        version = state.get("version")
        if version != _STATE_VERSION:
            raise ValueError(f"unsupported stat tracker state version {version!r}")
        buffers = state["buffers"]
        self._buffers = {
            str(prompt): deque((float(x) for x in values), maxlen=self.buffer_size)
            for prompt, values in buffers.items()
        }
