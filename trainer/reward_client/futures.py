"""What `RewardClient.submit` hands back: a future on the client's loop, and its result.

The trainer blocks only here, in `RewardFuture.result` / `gather_results`,
right before the PPO update, while earlier batches were scored meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trainer.reward_client.errors import RewardError

#: How long `result` waits past the deadline for the loop's own, more detailed error.
DEADLINE_GRACE_S = 1.0


@dataclass(frozen=True)
class RewardResult:
    """Rewards for one batch (or several, concatenated in submit order)."""

    rewards: np.ndarray  # (B,) float32: sum of weight * score over endpoints; NaN if dropped
    per_scorer: dict[str, np.ndarray]  # unweighted (B,) float32 scores per endpoint
    wait_s: float  # seconds the caller blocked waiting for this result
    #: (B,) bool: True where a job endpoint had no score and `missing = "drop"` left NaN.
    missing_mask: np.ndarray | None = None
    #: Counts over (job endpoint, item) pairs: scored by ratings, left NaN, filled by fallback.
    num_rated: int = 0
    num_dropped: int = 0
    num_filled: int = 0


class RewardFuture:
    """Handle to a submitted batch; `result` blocks until scored or the deadline passes."""

    def __init__(
        self,
        future: concurrent.futures.Future[RewardResult],
        deadline: float,
        deadline_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._future = future
        self._deadline = deadline  # a `clock` value
        self._deadline_s = deadline_s
        self._clock = clock  # stands still during outages, so they don't use up the deadline

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> None:
        """Stop scoring this batch (frees server and connections); `result` then raises."""
        self._future.cancel()

    def result(self, timeout: float | None = None) -> RewardResult:
        """Wait for the rewards.

        Raises RewardError on failure or once the deadline has passed, and the
        builtin TimeoutError if only `timeout` ran out (the batch keeps going).
        """
        start = time.monotonic()
        while True:
            wait = self._deadline - self._clock() + DEADLINE_GRACE_S
            if timeout is not None:
                wait = min(wait, timeout - (time.monotonic() - start))
            try:
                out = self._future.result(timeout=max(wait, 0.0))
                break
            except concurrent.futures.TimeoutError:
                if self._clock() >= self._deadline + DEADLINE_GRACE_S:
                    self._future.cancel()
                    raise RewardError(
                        f"rewards not ready within the {self._deadline_s:g}s deadline"
                    ) from None
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise TimeoutError(f"rewards not ready after {timeout:g}s") from None
                # the deadline moved on (an outage): keep waiting
            except concurrent.futures.CancelledError:
                raise RewardError("reward request was cancelled (client closed?)") from None
        return dataclasses.replace(out, wait_s=time.monotonic() - start)


def gather_results(futures: Sequence[RewardFuture]) -> tuple[RewardResult, float]:
    """Wait for all futures; return their results concatenated in order and the seconds blocked.

    On the first failure the remaining batches are cancelled so they stop
    occupying the reward server.
    """
    if not futures:
        raise ValueError("gather_results needs at least one future")
    start = time.monotonic()
    try:
        results = [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    waited = time.monotonic() - start
    keys = list(results[0].per_scorer)
    if any(list(r.per_scorer) != keys for r in results):
        raise ValueError("futures come from clients with different endpoints")
    masks = [
        r.missing_mask if r.missing_mask is not None else np.zeros(len(r.rewards), dtype=bool)
        for r in results
    ]
    combined = RewardResult(
        rewards=np.concatenate([r.rewards for r in results]),
        per_scorer={k: np.concatenate([r.per_scorer[k] for r in results]) for k in keys},
        wait_s=waited,
        missing_mask=np.concatenate(masks),
        num_rated=sum(r.num_rated for r in results),
        num_dropped=sum(r.num_dropped for r in results),
        num_filled=sum(r.num_filled for r in results),
    )
    return combined, waited
