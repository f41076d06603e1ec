"""Scoring one batch on the loop: chunks x endpoints, combined by weight, under a deadline.

Each chunk of up to `max_items_per_request` items is PNG-encoded once and
sent to every endpoint concurrently. The first failure cancels the rest of
the batch (so it stops occupying the servers) and fails it: by default a
partial or substituted reward would bias the update.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Iterable
from typing import Any

import numpy as np
from pydantic import ValidationError

from trainer.config import RewardEndpoint
from trainer.reward_client.batch import Batch, encode_items, score_body
from trainer.reward_client.deadline_clock import DeadlineClock
from trainer.reward_client.endpoints import describe, scorer_keys
from trainer.reward_client.errors import RewardError
from trainer.reward_client.futures import RewardResult
from trainer.reward_client.jobs import JobRunner
from trainer.reward_client.scorer_kinds import ScorerKinds
from trainer.reward_client.transport import Sender


async def all_or_cancel(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines as tasks; the first failure cancels the rest and is raised as is.

    A TaskGroup raises an ExceptionGroup; callers expect the RewardError itself.
    """
    first: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as tasks:
            for coro in coros:
                tasks.create_task(coro)
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
    if first is not None:  # raised outside the handler, so the group is not its context
        raise first


class BatchScorer:
    """Turns a `Batch` into a `RewardResult`; event-loop thread only."""

    def __init__(
        self,
        endpoints: list[RewardEndpoint],
        deadline_s: float,
        max_items_per_request: int,
        clock: DeadlineClock,
        executor: concurrent.futures.Executor,
        kinds: ScorerKinds,
        sender: Sender,
        jobs: JobRunner,
    ) -> None:
        self.endpoints = endpoints
        self.deadline_s = deadline_s
        self.max_items_per_request = max_items_per_request
        self._keys = scorer_keys(endpoints)
        self._clock = clock
        self._executor = executor  # PNG encoding off the loop
        self._kinds = kinds
        self._sender = sender
        self._jobs = jobs

    async def score_with_deadline(self, batch: Batch) -> RewardResult:
        """Score the batch, or raise RewardError naming what is outstanding at its deadline."""
        pending: dict[str, str] = {}  # what is still outstanding, for the deadline message
        task = asyncio.ensure_future(self._score(batch, pending))
        try:
            # Not asyncio.timeout: the deadline moves on while an endpoint is down.
            while not task.done() and (left := batch.deadline - self._clock()) > 0:
                await asyncio.wait({task}, timeout=left)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            waiting = "; ".join(f"{k}: {v}" for k, v in sorted(pending.items())[:4])
            more = f" (+{len(pending) - 4} more)" if len(pending) > 4 else ""
            raise RewardError(
                f"rewards for {len(batch.ids)} images not ready within the {self.deadline_s:g}s "
                f"deadline; still waiting on {waiting or 'nothing'}{more}"
            )
        try:
            return task.result()
        except (RewardError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise RewardError(f"scoring failed: {type(exc).__name__}: {exc}") from exc

    async def _score(self, batch: Batch, pending: dict[str, str]) -> RewardResult:
        n = len(batch.ids)
        scores = np.empty((len(self.endpoints), n), dtype=np.float64)
        step = self.max_items_per_request
        await all_or_cancel(
            self._score_chunk(batch, start, min(start + step, n), scores, pending)
            for start in range(0, n, step)
        )
        weights = np.array([ep.weight for ep in self.endpoints], dtype=np.float64)
        missing = np.isnan(scores).any(axis=0)
        rewards = np.where(missing, np.nan, weights @ np.nan_to_num(scores))
        return RewardResult(
            rewards=rewards.astype(np.float32),
            per_scorer={k: scores[i].astype(np.float32) for i, k in enumerate(self._keys)},
            wait_s=0.0,
            missing_mask=missing,
            num_rated=batch.counts["rated"],
            num_dropped=batch.counts["dropped"],
            num_filled=batch.counts["filled"],
        )

    async def _score_chunk(
        self, batch: Batch, start: int, stop: int, out: np.ndarray, pending: dict[str, str]
    ) -> None:
        label = f"items {start}-{stop - 1}"
        # Entries leave `pending` only on success, so a deadline can still name them.
        pending[label] = "PNG encoding"
        loop = asyncio.get_running_loop()
        try:
            items_json = await loop.run_in_executor(
                self._executor, encode_items, batch, start, stop
            )
        except (ValidationError, ValueError, TypeError) as exc:
            raise RewardError(f"cannot encode {label} for scoring: {exc}") from exc
        del pending[label]
        await all_or_cancel(
            self._post_chunk(i, batch, items_json, start, stop, out, pending)
            for i in range(len(self.endpoints))
        )

    async def _post_chunk(
        self,
        index: int,
        batch: Batch,
        items_json: bytes,
        start: int,
        stop: int,
        out: np.ndarray,
        pending: dict[str, str],
    ) -> None:
        ep = self.endpoints[index]
        label = f"{describe(ep)} items {start}-{stop - 1}"
        body = score_body(ep.scorer, items_json)
        pending[label] = "in flight"
        if await self._kinds.of(ep) == "job":
            out[index, start:stop] = await self._jobs.run(ep, batch, body, start, label, pending)
        else:
            out[index, start:stop] = await self._sender.post_scores(
                ep, body, stop - start, label, pending
            )
        del pending[label]
