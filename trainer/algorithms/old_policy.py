"""The old policy theta_old of the forward-process algorithms: an EMA of the trained
weights whose decay grows with training, min(rate x optimizer steps, max).

DiffusionNFT samples with it and mixes it into the implicit policies (its authors:
rate 0.001, max 0.5, updated after every epoch); AWM pulls towards it with an extra
KL (rate 0.001, max 0.3). At the first epochs the decay is near 0, so theta_old
follows the trained weights closely; later it lags, which keeps updates small.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from trainer.ema import EMA

STEP_KEY = "__old_policy_optimizer_steps"


class OldPolicy:
    """Float32 shadow weights, swapped into the live module where theta_old predicts."""

    def __init__(
        self, named_params: list[tuple[str, torch.nn.Parameter]], rate: float, max_decay: float
    ) -> None:
        self.rate = rate
        self.max_decay = max_decay
        self.optimizer_steps = 0
        self._ema = EMA(named_params, decay=0.5)  # the decay is set at every update

    def decay(self) -> float:
        return min(self.rate * self.optimizer_steps, self.max_decay)

    def update(self, optimizer_steps: int) -> float:
        """After an epoch of `optimizer_steps` steps: theta_old <- d theta_old + (1 - d) theta,
        d the decay at the steps taken so far; returns d."""
        self.optimizer_steps += optimizer_steps
        d = self.decay()
        self._ema.decay = d
        self._ema.update()
        return d

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        with self._ema.swapped_in():
            yield

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self._ema.state_dict(), STEP_KEY: torch.tensor(self.optimizer_steps)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if STEP_KEY not in state:
            raise ValueError(
                "the checkpoint holds no old policy: another algorithm made it. A DDPO run "
                "from before nft became the default (2026-12-07) resumes with "
                'train_algorithm = "ppo" in its config'
            )
        self.optimizer_steps = int(state.pop(STEP_KEY))
        self._ema.load_state_dict(state)
