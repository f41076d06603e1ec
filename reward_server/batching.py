"""Dynamic batching: coalesce concurrent requests into device-sized scorer calls.

Each scorer gets one worker thread, so its (GPU) work is serialised and the
event loop never blocks. The worker takes the oldest waiting request, then
keeps collecting more until it holds `max_batch_size` items or the oldest has
waited `max_wait_s`; a request larger than a batch is split across batches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from reward_server.scorers.base import Scorer, ScorerNotReady, ScorerUpstreamError

log = logging.getLogger(__name__)

Details = list[dict[str, Any]] | None
#: on_batch(scorer name, batch size, seconds, succeeded), called on the worker thread.
BatchObserver = Callable[[str, int, float, bool], None]


class ScoringQueue(Protocol):
    """What a route needs of a sync scorer's queue: this module's DynamicBatcher, or a
    queue that hands the work to another process (reward_server/ray_serve/)."""

    async def submit_versioned(self, images: list[Image.Image], prompts: list[str]) -> Scored:
        """Score these images (same order), saying which scorer version scored them."""
        ...

    async def aclose(self) -> None:
        """Refuse new work and finish what was submitted."""
        ...


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class ScorerFailed(RuntimeError):
    """The scorer raised or returned something malformed; the message says which."""


@dataclass(frozen=True)
class Scored:
    """One request's answer, with the scorer version that produced it.

    The version is read on the worker thread right after the batch was scored,
    so a scorer that swaps its weights between batches (`reward_head`'s hot
    reload) is reported with the weights that actually scored these items. If
    a swap fell between two batches of one request, both versions are listed,
    comma-separated.
    """

    scores: list[float]
    details: Details
    version: str


@dataclass(eq=False)
class _Job:
    images: list[Image.Image]
    prompts: list[str]
    future: Future[Scored]
    enqueued: float = field(default_factory=time.monotonic)
    taken: int = 0  # items already handed to a batch
    done: int = 0  # items already scored
    started: bool = False
    failed: bool = False
    scores: list[float] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    has_details: bool = False
    versions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scores = [math.nan] * len(self.images)
        self.details = [{} for _ in self.images]


_STOP = object()


class DynamicBatcher:
    """`await submit(images, prompts)` from any coroutine; `await aclose()` to drain and stop."""

    def __init__(
        self,
        scorer: Scorer,
        max_wait_s: float = 0.005,
        max_batch_size: int | None = None,
        name: str | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.scorer = scorer
        self.name = name or scorer.name
        self.on_batch = on_batch
        self.max_wait_s = max_wait_s
        self.max_batch_size = max(1, max_batch_size or scorer.max_batch_size)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"scorer-{self.name}", daemon=True)
        self._thread.start()

    # -- event-loop side ------------------------------------------------------

    async def submit(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], Details]:
        """Score these images (same order); the work may share a batch with other requests."""
        scored = await self.submit_versioned(images, prompts)
        return scored.scores, scored.details

    async def submit_versioned(self, images: list[Image.Image], prompts: list[str]) -> Scored:
        """As `submit`, also saying which scorer version scored the images."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return Scored([], None, self.scorer.version)
        future: Future[Scored] = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"scorer {self.name!r} is shutting down")
            self._queue.put(_Job(list(images), list(prompts), future))
        return await asyncio.wrap_future(future)

    async def aclose(self) -> None:
        """Refuse new work, finish everything already submitted, join the worker."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def close(self) -> None:
        """Blocking variant of aclose for non-async callers."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join()

    # -- worker side ----------------------------------------------------------

    def _run(self) -> None:
        backlog: deque[_Job] = deque()
        stopping = False
        while True:
            if not backlog:
                if stopping:
                    return
                item = self._queue.get()
                if item is _STOP:
                    return
                backlog.append(item)
            if not stopping:
                stopping = self._collect(backlog)
            self._run_batch(backlog)

    def _collect(self, backlog: deque[_Job]) -> bool:
        """Pull queued jobs until a batch is full or the oldest job's wait is up."""
        deadline = backlog[0].enqueued + self.max_wait_s
        pending = sum(len(job.images) - job.taken for job in backlog)
        while pending < self.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            backlog.append(item)
            pending += len(item.images)
        return False

    def _take_batch(self, backlog: deque[_Job]) -> list[tuple[_Job, int, int]]:
        """Slices (job, start, end) totalling at most max_batch_size items, oldest first."""
        slices: list[tuple[_Job, int, int]] = []
        room = self.max_batch_size
        for job in list(backlog):
            if room == 0:
                break
            if not job.started:
                # A request whose caller went away is dropped before any work is spent on it.
                if not job.future.set_running_or_notify_cancel():
                    backlog.remove(job)
                    continue
                job.started = True
            n = min(room, len(job.images) - job.taken)
            slices.append((job, job.taken, job.taken + n))
            job.taken += n
            room -= n
            if job.taken == len(job.images):
                backlog.remove(job)
        return slices

    def _run_batch(self, backlog: deque[_Job]) -> None:
        slices = self._take_batch(backlog)
        if not slices:
            return
        images = [img for job, a, b in slices for img in job.images[a:b]]
        prompts = [p for job, a, b in slices for p in job.prompts[a:b]]
        try:
            scores, details = self._call_scorer(images, prompts)
        except Exception as exc:
            for job, _, _ in slices:
                self._fail(job, backlog, exc)
            return
        version = str(self.scorer.version)  # this thread alone calls score: it is this batch's
        offset = 0
        for job, a, b in slices:
            n = b - a
            if job.failed:
                offset += n
                continue
            if version not in job.versions:
                job.versions.append(version)
            job.scores[a:b] = scores[offset : offset + n]
            if details is not None:
                job.details[a:b] = details[offset : offset + n]
                job.has_details = True
            offset += n
            job.done += n
            if job.done == len(job.images):
                job.future.set_result(
                    Scored(
                        job.scores,
                        job.details if job.has_details else None,
                        ", ".join(job.versions),
                    )
                )

    def _call_scorer(self, images: list[Image.Image], prompts: list[str]) -> tuple[list, Details]:
        started = time.perf_counter()
        ok = False
        try:
            scores, details = self._score_checked(images, prompts)
            ok = True
        finally:
            elapsed = time.perf_counter() - started
            if self.on_batch is not None:
                try:
                    self.on_batch(self.name, len(images), elapsed, ok)
                except Exception:  # metrics must never fail a batch
                    log.exception("batch observer failed")
        log.debug("scorer %s: batch of %d in %.1f ms", self.name, len(images), elapsed * 1000)
        return scores, details

    def _score_checked(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], Details]:
        return score_checked(self.scorer, self.name, images, prompts)

    @staticmethod
    def _fail(job: _Job, backlog: deque[_Job], exc: Exception) -> None:
        if job.failed:
            return
        job.failed = True
        if job in backlog:
            backlog.remove(job)
        job.future.set_exception(exc)


def score_checked(
    scorer: Scorer, name: str, images: list[Image.Image], prompts: list[str]
) -> tuple[list[float], Details]:
    """scorer.score, with its failures and malformed answers turned into ScorerFailed."""
    try:
        scores, details = scorer.score(images, prompts)
    except (ScorerNotReady, ScorerUpstreamError):
        raise  # an operator's to-do (answered 503/502/504), not a bug: no traceback
    except Exception as exc:
        log.exception("scorer %s failed on a batch of %d", name, len(images))
        raise ScorerFailed(f"scorer {name!r} failed: {type(exc).__name__}: {exc}") from exc
    scores = [float(s) for s in scores]
    if len(scores) != len(images):
        raise ScorerFailed(
            f"scorer {name!r} returned {len(scores)} scores for {len(images)} images"
        )
    if not all(math.isfinite(s) for s in scores):
        raise ScorerFailed(f"scorer {name!r} returned a non-finite score")
    if details is not None and len(details) != len(images):
        raise ScorerFailed(
            f"scorer {name!r} returned {len(details)} details for {len(images)} images"
        )
    return scores, details
