"""An exponential moving average of the trained weights, for evaluation and saving.

Sampling stays on the live weights (PPO must be on-policy); the average is
what gets saved and evaluated, which smooths the noise of small RL batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    """Shadow float32 copies of `params`, updated after every optimizer step."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._params = dict(named_params)
        self.shadow = {n: p.detach().float().clone() for n, p in self._params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self._params.items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in place of the live ones, for the duration of the block."""
        live = {n: p.detach().clone() for n, p in self._params.items()}
        with torch.no_grad():
            for name, param in self._params.items():
                param.copy_(self.shadow[name].to(param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self._params.items():
                    param.copy_(live[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("EMA state does not match the trained parameters")
        for name, value in state.items():
            self.shadow[name].copy_(value.to(self.shadow[name].device))
