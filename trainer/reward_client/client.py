"""`RewardClient`: the synchronous face of the reward client, and its event-loop thread.

The trainer samples on the GPU while earlier batches are PNG-encoded, sent and
scored: `submit` hands a batch to an event loop on a daemon thread and
returns a `RewardFuture` at once. Everything on the loop is built here and
wired together: replica choice, outages, sending, jobs, batch scoring.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Any

import httpx
import numpy as np

from shared.protocol import MAX_ITEMS_PER_REQUEST
from trainer.config import RewardEndpoint
from trainer.reward_client.batch import Batch
from trainer.reward_client.deadline_clock import DeadlineClock
from trainer.reward_client.endpoints import base_url
from trainer.reward_client.errors import RewardError, RewardServerUnavailable
from trainer.reward_client.futures import DEADLINE_GRACE_S, RewardFuture
from trainer.reward_client.jobs import JobRunner
from trainer.reward_client.outage import Outages
from trainer.reward_client.readiness import find_problems
from trainer.reward_client.replicas import Replicas
from trainer.reward_client.scorer_kinds import ScorerKinds
from trainer.reward_client.scoring import BatchScorer
from trainer.reward_client.transport import Sender

logger = logging.getLogger(__package__)  # the package's logger, "trainer.reward_client"


class RewardClient:
    """Scores image batches on one or more reward endpoints, combined by weight.

    Owns an event loop on a daemon thread, one `httpx.AsyncClient` and a small
    thread pool for PNG encoding. Use as a context manager or call `close`.
    """

    def __init__(
        self,
        endpoints: list[RewardEndpoint],
        deadline_s: float = 600,
        *,
        max_items_per_request: int = MAX_ITEMS_PER_REQUEST,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        encode_workers: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        job_poll_s: float = 30.0,
        job_margin_s: float | None = None,
        failover_cooldown_s: float = 30.0,
        outage_probe_s: float = 2.0,
        outage_log_every_s: float = 15.0,
    ) -> None:
        """`deadline_s` bounds each batch from submit to result; `transport` is for tests.

        A replica URL that gave a connection error or 5xx is avoided for
        `failover_cooldown_s` while another replica of the endpoint is healthy.

        While an endpoint is down its replicas' `/readyz` is probed every
        `outage_probe_s`, and a line is logged every `outage_log_every_s`; time
        down does not count against `deadline_s` (see `outage.py`).

        Job endpoints long-poll up to `job_poll_s` per request and stop `job_margin_s`
        (default: 10% of the deadline, clamped to 1-10 s and at most half the
        deadline) before the deadline, to collect what is rated and apply the
        endpoint's `missing` policy in time; a loaded host needs the 1 s floor.
        """
        if not endpoints:
            raise ValueError("RewardClient needs at least one reward endpoint")
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        if not 1 <= max_items_per_request <= MAX_ITEMS_PER_REQUEST:
            raise ValueError(f"max_items_per_request must be in 1..{MAX_ITEMS_PER_REQUEST}")
        # Settings as given, for callers to read; the parts below hold their own copies.
        self.endpoints = list(endpoints)
        self.deadline_s = float(deadline_s)
        self.max_items_per_request = max_items_per_request
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.job_poll_s = job_poll_s
        self.job_margin_s = (
            min(max(1.0, min(10.0, 0.1 * self.deadline_s)), 0.5 * self.deadline_s)
            if job_margin_s is None
            else job_margin_s
        )
        self.failover_cooldown_s = failover_cooldown_s
        self.outage_probe_s = outage_probe_s
        self.outage_log_every_s = outage_log_every_s
        self._closed = False
        self._close_lock = threading.Lock()

        workers = encode_workers or min(4, os.cpu_count() or 1)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="reward-encode"
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="reward-client", daemon=True
        )
        self._thread.start()
        # Pool waits are bounded by the deadline, not the per-request timeout,
        # so many queued chunks don't fail just for waiting their turn.
        self._http = httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            timeout=httpx.Timeout(60.0, pool=None),
        )
        self._clock = DeadlineClock()  # stands still while any endpoint is down
        self._replicas = Replicas(failover_cooldown_s)
        self._outages = Outages(
            self._http, self._replicas, self._clock, outage_probe_s, outage_log_every_s
        )
        self._kinds = ScorerKinds(self._http, self._replicas)
        sender = Sender(self._http, self._replicas, self._outages, backoff_base_s, backoff_max_s)
        jobs = JobRunner(
            self._http, sender, self._clock, self._executor, job_poll_s, self.job_margin_s
        )
        self._scorer = BatchScorer(
            self.endpoints,
            self.deadline_s,
            max_items_per_request,
            self._clock,
            self._executor,
            self._kinds,
            sender,
            jobs,
        )

    def submit(
        self,
        images: np.ndarray,
        prompts: list[str],
        ids: list[str] | None = None,
        metadata: list[dict[str, Any]] | None = None,
    ) -> RewardFuture:
        """Queue a (B, H, W, 3) uint8 batch for scoring and return at once."""
        if self._closed:
            raise RewardError("reward client is closed")
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected (B, H, W, 3) uint8 images, got {images.dtype} {images.shape}"
            )
        n = images.shape[0]
        if n == 0:
            raise ValueError("cannot score an empty batch")
        ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
        metadata = [{} for _ in range(n)] if metadata is None else list(metadata)
        prompts = list(prompts)
        for name, seq in (("prompts", prompts), ("ids", ids), ("metadata", metadata)):
            if len(seq) != n:
                raise ValueError(f"{len(seq)} {name} for {n} images")
        deadline = self._clock() + self.deadline_s
        batch = Batch(np.array(images, copy=True, order="C"), prompts, ids, metadata, deadline)
        coro = self._scorer.score_with_deadline(batch)
        try:
            cf = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop closed between the check above and here
            coro.close()
            raise RewardError("reward client is closed") from None
        return RewardFuture(cf, deadline, self.deadline_s, self._clock)

    def check_ready(self, timeout_s: float = 10) -> None:
        """Fail fast, before epoch 1, if a server is down, not ready or lacks a scorer."""
        if self._closed:
            raise RewardError("reward client is closed")
        cf = asyncio.run_coroutine_threadsafe(
            find_problems(self._http, self.endpoints, self._replicas, self._kinds, timeout_s),
            self._loop,
        )
        try:
            problems = cf.result(timeout=timeout_s + DEADLINE_GRACE_S)
        except concurrent.futures.TimeoutError:
            cf.cancel()
            urls = sorted({base_url(u) for ep in self.endpoints for u in ep.urls})
            raise RewardServerUnavailable(
                f"reward servers {', '.join(urls)} did not answer within {timeout_s:g}s"
            ) from None
        if problems:
            raise RewardServerUnavailable("; ".join(problems))

    def endpoints_down(self) -> list[str]:
        """Replica URLs (comma-joined per endpoint) now waited on as down (for tests and logs)."""
        return self._outages.where_down()

    def url_in_cooldown(self, url: str) -> bool:
        """Whether a replica URL is being avoided after a failure (for tests and logs)."""
        return self._replicas.cooling(base_url(url))

    def close(self) -> None:
        """Cancel outstanding batches, close connections and stop the loop and encode threads."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        except Exception:  # closing must not mask the caller's own error
            logger.exception("error while closing the reward client")
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _shutdown(self) -> None:
        """Cancel every batch still in flight; their futures then raise RewardError."""
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()
