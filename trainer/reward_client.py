"""Async HTTP client for reward servers, driven from synchronous training code.

The trainer samples on the GPU while earlier batches are PNG-encoded, sent and
scored: `RewardClient.submit` hands a batch to an event loop on a daemon
thread and returns a `RewardFuture` at once; the trainer blocks only in
`RewardFuture.result` / `gather_results`, right before the PPO update.

Missing-reward policy: by default, fail. If any endpoint cannot score any
item (after retries, or past the deadline) the whole batch raises
`RewardError`; silently training on a partial or substituted reward would bias
the update. Job endpoints (human ratings: POST /v1/jobs, long-polled) may
instead opt in per endpoint (`missing`) to "drop" unrated items (their reward
is NaN and `RewardResult.missing_mask` marks them, for the trainer to leave
out) or to "fallback", scoring just those items with another scorer on the
same server. Job endpoints stop polling a little before the deadline
(`job_margin_s`) so that partial results and the fallback still fit.

Scale-out: an endpoint's `url` may list several replicas. Each request goes to
the replica with the fewest requests in flight (ties round-robin); a
connection error or 5xx fails over at once to a replica not yet tried, and a
replica that failed is avoided for `failover_cooldown_s` (unless all are).
A job stays on the replica that accepted it.

Outages: a server restart (OOM kill, upgrade, reloading weights) looks like
refused or reset connections, timeouts or 502/503/504 for tens of seconds,
which would use up `max_retries` in seconds. So once the retries of a request
are spent on such errors, the client asks the endpoint's replicas `/readyz`:
if one is ready, the request itself is at fault and fails as before; if none
is, the endpoint is down, and every request to it waits (one readiness probe
every `outage_probe_s`, one log line every `outage_log_every_s`) and is sent
again when a replica is back, for up to the endpoint's `outage_budget_s` of
downtime per request. While any endpoint is down the epoch deadline clock
stands still, so an outage is bounded by its budget, not by the deadline.
Job polls keep their job id across a restart; a server that forgot the job
(404) gets the items again once, as a new job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from pydantic import TypeAdapter, ValidationError

from shared.images import encode_png
from shared.protocol import (
    MAX_ITEMS_PER_REQUEST,
    JobAccepted,
    JobStatus,
    ScoreItem,
    ScoreResponse,
    ScorerList,
)
from trainer.config import RewardEndpoint

logger = logging.getLogger(__name__)

_ITEMS_JSON = TypeAdapter(list[ScoreItem])
#: Statuses worth retrying: the server may recover (overload, restart, gateway).
_RETRY_4XX = {408, 429}
#: Statuses that say the server (or the gateway's upstream) is down, not that the request is bad.
_OUTAGE_STATUSES = {502, 503, 504}
#: How long `result` waits past the deadline for the loop's own, more detailed error.
_DEADLINE_GRACE_S = 1.0


class RewardError(RuntimeError):
    """Rewards could not be obtained; the message names the endpoint and the reason."""


class RewardServerUnavailable(RewardError):
    """A reward server is unreachable, not ready, or lacks a configured scorer."""


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


@dataclass
class _Batch:
    """What one submit sends; images are a private copy so the caller may reuse its buffer."""

    images: np.ndarray
    prompts: list[str]
    ids: list[str]
    metadata: list[dict[str, Any]]
    deadline: float = math.inf  # RewardClient._deadline_clock() value
    counts: dict[str, int] = field(default_factory=lambda: {"rated": 0, "dropped": 0, "filled": 0})


@dataclass
class _Outage:
    """One endpoint (a set of replica URLs) found down; requests to it wait on `back`."""

    where: str  # the replica URLs, comma-joined, for logs and errors
    since: float  # time.monotonic() of the first failure of the streak
    reason: str  # the latest failure or probe answer
    budget_s: float  # the largest outage budget among the endpoints waiting
    back: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0
    last_log: float = 0.0
    ended: float | None = None  # time.monotonic() when a replica was ready again
    watcher: asyncio.Task[None] | None = None


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
            wait = self._deadline - self._clock() + _DEADLINE_GRACE_S
            if timeout is not None:
                wait = min(wait, timeout - (time.monotonic() - start))
            try:
                out = self._future.result(timeout=max(wait, 0.0))
                break
            except concurrent.futures.TimeoutError:
                if self._clock() >= self._deadline + _DEADLINE_GRACE_S:
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


def _scorer_keys(endpoints: Sequence[RewardEndpoint]) -> list[str]:
    """Scorer name, qualified by URL only where a name repeats, so log keys stay short."""
    names = [ep.scorer for ep in endpoints]
    keys: list[str] = []
    for i, ep in enumerate(endpoints):
        key = ep.scorer if names.count(ep.scorer) == 1 else f"{ep.scorer}@{_url_text(ep)}"
        if key in keys:
            key = f"{key}#{i}"
        keys.append(key)
    return keys


def _base_url(url: str) -> str:
    return url.rstrip("/")


def _url_text(ep: RewardEndpoint) -> str:
    """The endpoint's URL as configured; replicas joined by commas."""
    return ep.url if isinstance(ep.url, str) else ",".join(ep.url)


def _describe(ep: RewardEndpoint, url: str | None = None) -> str:
    where = url or ",".join(_base_url(u) for u in ep.urls)
    return f"reward endpoint {where} (scorer {ep.scorer!r})"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _problem_detail(resp: httpx.Response) -> str:
    """The `detail` of a problem+json body, else the start of whatever the server sent."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)[:500]
    return json.dumps(body)[:500]


def _encode_items(batch: _Batch, start: int, stop: int) -> bytes:
    """PNG-encode one chunk and serialise its items once, shared by every endpoint and retry."""
    return _encode_indices(batch, range(start, stop))


def _encode_indices(batch: _Batch, indices: Sequence[int]) -> bytes:
    items = [
        ScoreItem(
            id=batch.ids[i],
            prompt=batch.prompts[i],
            image=encode_png(batch.images[i]),
            metadata=batch.metadata[i],
        )
        for i in indices
    ]
    return _ITEMS_JSON.dump_json(items)


def _score_body(scorer: str, items_json: bytes) -> bytes:
    return b'{"scorer":' + json.dumps(scorer).encode() + b',"items":' + items_json + b"}"


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
        down does not count against `deadline_s` (see the module docstring).

        Job endpoints long-poll up to `job_poll_s` per request and stop `job_margin_s`
        (default: 10% of the deadline, at most 10 s) before the deadline, to collect
        what is rated and apply the endpoint's `missing` policy in time.
        """
        if not endpoints:
            raise ValueError("RewardClient needs at least one reward endpoint")
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        if not 1 <= max_items_per_request <= MAX_ITEMS_PER_REQUEST:
            raise ValueError(f"max_items_per_request must be in 1..{MAX_ITEMS_PER_REQUEST}")
        self.endpoints = list(endpoints)
        self.deadline_s = float(deadline_s)
        self.max_items_per_request = max_items_per_request
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._keys = _scorer_keys(self.endpoints)
        self.job_poll_s = job_poll_s
        self.job_margin_s = (
            min(10.0, 0.1 * self.deadline_s) if job_margin_s is None else job_margin_s
        )
        self._kinds: dict[str, dict[str, str]] = {}  # url -> scorer -> "sync" | "job"
        self._kind_locks: dict[str, asyncio.Lock] = {}
        self.failover_cooldown_s = failover_cooldown_s
        # Replica choice; touched only on the event loop thread.
        self._down_until: dict[str, float] = {}  # base url -> time.monotonic() value
        self._in_flight: defaultdict[str, int] = defaultdict(int)  # base url -> requests
        self._turn: defaultdict[tuple[str, ...], int] = defaultdict(int)  # round-robin
        self.outage_probe_s = outage_probe_s
        self.outage_log_every_s = outage_log_every_s
        self._outages: dict[tuple[str, ...], _Outage] = {}  # replica URLs -> outage; loop only
        # The deadline clock: time.monotonic() less the time some endpoint was down.
        self._clock_lock = threading.Lock()
        self._down_depth = 0
        self._down_since = 0.0
        self._down_total = 0.0
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

    # -- public, synchronous API -------------------------------------------------

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
        deadline = self._deadline_clock() + self.deadline_s
        batch = _Batch(np.array(images, copy=True, order="C"), prompts, ids, metadata, deadline)
        coro = self._score_with_deadline(batch)
        try:
            cf = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop closed between the check above and here
            coro.close()
            raise RewardError("reward client is closed") from None
        return RewardFuture(cf, deadline, self.deadline_s, self._deadline_clock)

    def check_ready(self, timeout_s: float = 10) -> None:
        """Fail fast, before epoch 1, if a server is down, not ready or lacks a scorer."""
        if self._closed:
            raise RewardError("reward client is closed")
        cf = asyncio.run_coroutine_threadsafe(self._check_ready(timeout_s), self._loop)
        try:
            problems = cf.result(timeout=timeout_s + _DEADLINE_GRACE_S)
        except concurrent.futures.TimeoutError:
            cf.cancel()
            urls = sorted({_base_url(u) for ep in self.endpoints for u in ep.urls})
            raise RewardServerUnavailable(
                f"reward servers {', '.join(urls)} did not answer within {timeout_s:g}s"
            ) from None
        if problems:
            raise RewardServerUnavailable("; ".join(problems))

    def endpoints_down(self) -> list[str]:
        """Replica URLs (comma-joined per endpoint) now waited on as down (for tests and logs)."""
        return [o.where for o in list(self._outages.values())]

    def url_in_cooldown(self, url: str) -> bool:
        """Whether a replica URL is being avoided after a failure (for tests and logs)."""
        return self._down_until.get(_base_url(url), 0.0) > time.monotonic()

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

    # -- event-loop side ---------------------------------------------------------

    async def _shutdown(self) -> None:
        """Cancel every batch still in flight; their futures then raise RewardError."""
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    def _deadline_clock(self) -> float:
        """time.monotonic() that stands still while any endpoint is down (thread-safe)."""
        with self._clock_lock:
            now = time.monotonic()
            down = self._down_total + (now - self._down_since if self._down_depth else 0.0)
            return now - down

    def _pause_deadlines(self, pause: bool) -> None:
        """Start (or end) one outage's hold on every batch's deadline."""
        with self._clock_lock:
            now = time.monotonic()
            if pause:
                if self._down_depth == 0:
                    self._down_since = now
                self._down_depth += 1
            else:
                self._down_depth -= 1
                if self._down_depth == 0:
                    self._down_total += now - self._down_since

    async def _score_with_deadline(self, batch: _Batch) -> RewardResult:
        pending: dict[str, str] = {}  # what is still outstanding, for the deadline message
        task = asyncio.ensure_future(self._score(batch, pending))
        try:
            # Not wait_for: the deadline moves on while an endpoint is down.
            while not task.done() and (left := batch.deadline - self._deadline_clock()) > 0:
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

    async def _score(self, batch: _Batch, pending: dict[str, str]) -> RewardResult:
        n = len(batch.ids)
        scores = np.empty((len(self.endpoints), n), dtype=np.float64)
        step = self.max_items_per_request
        chunks = [(s, min(s + step, n)) for s in range(0, n, step)]
        tasks = [
            asyncio.ensure_future(self._score_chunk(batch, start, stop, scores, pending))
            for start, stop in chunks
        ]
        await _all_or_cancel(tasks)
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
        self, batch: _Batch, start: int, stop: int, out: np.ndarray, pending: dict[str, str]
    ) -> None:
        label = f"items {start}-{stop - 1}"
        # Entries leave `pending` only on success, so a deadline can still name them.
        pending[label] = "PNG encoding"
        loop = asyncio.get_running_loop()
        try:
            items_json = await loop.run_in_executor(
                self._executor, _encode_items, batch, start, stop
            )
        except (ValidationError, ValueError, TypeError) as exc:
            raise RewardError(f"cannot encode {label} for scoring: {exc}") from exc
        del pending[label]
        posts = [
            asyncio.ensure_future(self._post_chunk(i, batch, items_json, start, stop, out, pending))
            for i in range(len(self.endpoints))
        ]
        await _all_or_cancel(posts)

    async def _post_chunk(
        self,
        index: int,
        batch: _Batch,
        items_json: bytes,
        start: int,
        stop: int,
        out: np.ndarray,
        pending: dict[str, str],
    ) -> None:
        ep = self.endpoints[index]
        label = f"{_describe(ep)} items {start}-{stop - 1}"
        body = _score_body(ep.scorer, items_json)
        pending[label] = "in flight"
        if await self._kind(ep) == "job":
            out[index, start:stop] = await self._run_job(ep, batch, body, start, label, pending)
        else:
            out[index, start:stop] = await self._post_with_retries(
                ep, body, stop - start, label, pending
            )
        del pending[label]

    async def _post_with_retries(
        self, ep: RewardEndpoint, body: bytes, n: int, label: str, pending: dict[str, str]
    ) -> np.ndarray:
        resp, _ = await self._request(ep, "POST", "/v1/score", label, pending, content=body)
        return _parse_scores(resp, ep, n)

    def _cooling(self, base: str, now: float) -> bool:
        return self._down_until.get(base, 0.0) > now

    def _pick_url(self, bases: list[str], tried: set[str]) -> str:
        """Fewest in flight among healthy replicas not yet tried, ties round-robin."""
        now = time.monotonic()
        fresh = [b for b in bases if b not in tried] or bases
        healthy = [b for b in fresh if not self._cooling(b, now)]
        if not healthy:  # all cooling down: the one that failed longest ago
            return min(fresh, key=lambda b: self._down_until.get(b, 0.0))
        key = tuple(bases)
        turn = self._turn[key] % len(healthy)
        self._turn[key] += 1
        rotated = healthy[turn:] + healthy[:turn]
        return min(rotated, key=lambda b: self._in_flight[b])

    async def _request(
        self,
        ep: RewardEndpoint,
        method: str,
        path: str,
        label: str,
        pending: dict[str, str],
        content: bytes | None = None,
        extra_timeout_s: float = 0.0,
        pin: str | None = None,
        accept: Collection[int] = (),
    ) -> tuple[httpx.Response, str]:
        """One request with retries on connection errors, 5xx, 408 and 429; 4xx fail at once.

        Returns the response and the replica base URL that gave it (statuses in
        `accept` count as answers). Connection errors and 5xx fail over at once
        to a healthy replica not yet tried, without using up a retry; `pin` keeps
        every attempt on one replica (a job's). When the retries end on an
        outage (see the module docstring) the request waits it out and starts over.
        """
        bases = [pin] if pin is not None else [_base_url(u) for u in ep.urls]
        key = tuple(bases)
        rides_out = ep.outage_budget_s > 0
        headers = _headers(ep.api_key)
        if content is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        tries = 0
        tried: set[str] = set()
        streak: float | None = None  # time.monotonic() of the first failure since an answer
        down_s = 0.0  # time this request spent waiting on outages, against its budget
        while True:
            outage = self._outages.get(key)
            if outage is not None and rides_out:  # known down: wait with the others
                down_s += await self._wait_out(ep, key, outage, label, pending, down_s)
                attempt, streak = 0, None
                tried.clear()
            base = self._pick_url(bases, tried)
            tried.add(base)
            tries += 1
            retry_after: float | None = None
            failed_over = False
            self._in_flight[base] += 1
            try:
                resp = await self._http.request(
                    method,
                    f"{base}{path}",
                    content=content,
                    headers=headers,
                    timeout=httpx.Timeout(ep.timeout_s + extra_timeout_s, pool=None),
                )
            except httpx.TransportError as exc:  # connect/read errors and timeouts
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                failed_over = looks_down = True
            else:
                status = resp.status_code
                if status < 400 or status in accept:
                    self._down_until.pop(base, None)
                    return resp, base
                reason = f"HTTP {status}: {_problem_detail(resp)}"
                if status < 500 and status not in _RETRY_4XX:
                    raise RewardError(f"{_describe(ep, base)} rejected the request: {reason}")
                retry_after = _retry_after(resp)
                failed_over = status >= 500
                looks_down = status in _OUTAGE_STATUSES
            finally:
                self._in_flight[base] -= 1
            streak = time.monotonic() if streak is None else streak
            if failed_over and len(ep.urls) > 1:
                now = time.monotonic()
                if not self._cooling(base, now):
                    logger.warning(
                        "%s: %s; avoiding it for %gs",
                        _describe(ep, base),
                        reason,
                        self.failover_cooldown_s,
                    )
                self._down_until[base] = now + self.failover_cooldown_s
                if pin is None and any(b not in tried and not self._cooling(b, now) for b in bases):
                    pending[label] = f"failing over after {reason}"
                    continue
            if looks_down and rides_out and key in self._outages:
                continue  # declared down meanwhile: join the wait instead of retrying
            if attempt >= ep.max_retries:
                if looks_down and rides_out:
                    waited = await self._ride_out(ep, key, streak, reason, label, pending, down_s)
                    if waited is not None:
                        down_s += waited
                        attempt, streak = 0, None
                        tried.clear()
                        continue
                last = f" (last on {base})" if len(bases) > 1 else ""
                raise RewardError(f"{_describe(ep)} failed after {tries} attempts: {reason}{last}")
            delay = self._backoff(attempt, retry_after)
            attempt += 1
            tried.clear()
            logger.warning(
                "%s: %s; retry %d/%d in %.2fs",
                _describe(ep, base),
                reason,
                attempt,
                ep.max_retries,
                delay,
            )
            pending[label] = f"retry {attempt} after {reason}"
            await asyncio.sleep(delay)

    # -- outages: an endpoint with no replica ready ------------------------------------

    async def _ride_out(
        self,
        ep: RewardEndpoint,
        key: tuple[str, ...],
        since: float,
        reason: str,
        label: str,
        pending: dict[str, str],
        down_s: float,
    ) -> float | None:
        """Wait until a replica is ready; return how long the endpoint was down.

        None instead if one already says it is ready: then the request, not the
        server, is at fault and fails as before.
        """
        outage = self._outages.get(key)
        if outage is None:
            problems = await self._probe_all(ep, key)
            if any(p is None for p in problems):
                return None
            outage = self._outages.get(key)  # another request may have declared it meanwhile
            if outage is None:
                outage = self._declare_outage(ep, key, since, problems[0] or reason)
        return await self._wait_out(ep, key, outage, label, pending, down_s)

    def _declare_outage(
        self, ep: RewardEndpoint, key: tuple[str, ...], since: float, reason: str
    ) -> _Outage:
        now = time.monotonic()
        outage = _Outage(",".join(key), since, reason, ep.outage_budget_s, last_log=now)
        self._outages[key] = outage
        self._pause_deadlines(True)
        logger.warning(
            "reward server %s is down (%s, failing for %.0fs); requests to it wait for a "
            "replica to be ready, up to %gs (outage_budget_s), and batch deadlines are on hold",
            outage.where,
            reason,
            now - since,
            ep.outage_budget_s,
        )
        outage.watcher = asyncio.ensure_future(self._watch(ep, key, outage))
        return outage

    async def _wait_out(
        self,
        ep: RewardEndpoint,
        key: tuple[str, ...],
        outage: _Outage,
        label: str,
        pending: dict[str, str],
        down_s: float,
    ) -> float:
        """Wait for the endpoint to be back; RewardError once this endpoint's budget is spent."""
        outage.waiters += 1
        outage.budget_s = max(outage.budget_s, ep.outage_budget_s)
        pending[label] = f"waiting for {outage.where} to come back"
        try:
            left = ep.outage_budget_s - down_s - (time.monotonic() - outage.since)
            if not outage.back.is_set():
                await asyncio.wait_for(outage.back.wait(), timeout=max(left, 0.0))
        except TimeoutError:
            down = time.monotonic() - outage.since
            earlier = f", after {down_s:.0f}s down earlier" if down_s else ""
            raise RewardError(
                f"{_describe(ep, outage.where)} is down: no replica ready for {down:.0f}s"
                f"{earlier}, past its outage budget (outage_budget_s = {ep.outage_budget_s:g}); "
                f"last error: {outage.reason}"
            ) from None
        finally:
            outage.waiters -= 1
            if outage.waiters == 0 and not outage.back.is_set():
                self._end_outage(key, outage, back=False)  # every waiter gave up
        assert outage.ended is not None
        return outage.ended - outage.since

    async def _watch(self, ep: RewardEndpoint, key: tuple[str, ...], outage: _Outage) -> None:
        """Probe the replicas until one is ready; log now and then meanwhile."""
        while True:
            await asyncio.sleep(self.outage_probe_s)
            problems = await self._probe_all(ep, key)
            ready = [b for b, p in zip(key, problems, strict=True) if p is None]
            if ready:
                for b in ready:
                    self._down_until.pop(b, None)
                self._end_outage(key, outage, back=True)
                return
            outage.reason = problems[0] or outage.reason
            now = time.monotonic()
            if now - outage.last_log >= self.outage_log_every_s:
                outage.last_log = now
                logger.warning(
                    "reward server %s still down after %.0fs (%s); %.0fs of the %gs outage "
                    "budget left; %d requests waiting",
                    outage.where,
                    now - outage.since,
                    outage.reason,
                    max(0.0, outage.budget_s - (now - outage.since)),
                    outage.budget_s,
                    outage.waiters,
                )

    def _end_outage(self, key: tuple[str, ...], outage: _Outage, back: bool) -> None:
        if outage.ended is not None:
            return
        outage.ended = time.monotonic()
        if self._outages.get(key) is outage:
            del self._outages[key]
        self._pause_deadlines(False)
        if back:
            logger.warning(
                "reward server %s is back after %.0fs down; sending the %d waiting requests again",
                outage.where,
                outage.ended - outage.since,
                outage.waiters,
            )
            outage.back.set()
        elif outage.watcher is not None:
            outage.watcher.cancel()

    async def _probe_all(self, ep: RewardEndpoint, key: tuple[str, ...]) -> list[str | None]:
        """Per replica: None if `/readyz` says ready, else what it said instead."""
        return list(await asyncio.gather(*(self._probe(ep, b) for b in key)))

    async def _probe(self, ep: RewardEndpoint, base: str) -> str | None:
        try:
            resp = await self._http.get(
                f"{base}/readyz",
                headers=_headers(ep.api_key),
                timeout=httpx.Timeout(min(ep.timeout_s, 10.0), pool=None),
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if resp.status_code == 200:
            return None
        return f"/readyz: HTTP {resp.status_code}: {_problem_detail(resp)}"

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential with jitter, so many trainer ranks don't retry in lockstep."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    # -- job endpoints (human ratings) -----------------------------------------------

    async def _kind(self, ep: RewardEndpoint) -> str:
        """ "sync" or "job": the endpoint's mode, or for "auto" what GET /v1/scorers says."""
        if ep.mode != "auto":
            return ep.mode
        now = time.monotonic()
        bases = sorted((_base_url(u) for u in ep.urls), key=lambda b: self._cooling(b, now))
        for url in bases:  # replicas serve the same scorers: the first that answers says
            lock = self._kind_locks.setdefault(url, asyncio.Lock())
            async with lock:
                if url not in self._kinds:
                    try:
                        resp = await self._http.get(
                            f"{url}/v1/scorers",
                            headers=_headers(ep.api_key),
                            timeout=ep.timeout_s,
                        )
                        listing = ScorerList.model_validate_json(resp.content)
                        self._kinds[url] = {s.name: s.kind for s in listing.scorers}
                    except (httpx.TransportError, ValidationError) as exc:
                        logger.warning("%s: cannot list scorers (%s)", url, exc)
                        continue
            return self._kinds[url].get(ep.scorer, "sync")
        # Sync is what every protocol server offers; the score call will say more.
        logger.warning("%s: cannot list scorers anywhere; assuming sync", _describe(ep))
        return "sync"

    async def _run_job(
        self,
        ep: RewardEndpoint,
        batch: _Batch,
        body: bytes,
        start: int,
        label: str,
        pending: dict[str, str],
    ) -> np.ndarray:
        """Submit a job, long-poll it until done or just before the deadline, apply `missing`.

        Polls ride out a restart of the accepting replica under the same job id;
        if the server no longer knows the job (404), the items go again once.
        """
        stop_at = batch.deadline - self.job_margin_s  # a _deadline_clock() value
        job_id, base = await self._submit_job(ep, body, stop_at, label, pending)
        resubmitted = False
        while True:
            wait = max(0.0, min(self.job_poll_s, stop_at - self._deadline_clock()))
            pending[label] = f"job {job_id}: waiting for ratings"
            resp, _ = await self._request(
                ep,
                "GET",
                f"/v1/jobs/{job_id}?wait={wait:.3f}",
                label,
                pending,
                extra_timeout_s=wait,
                pin=base,
                accept=(404,),
            )
            if resp.status_code == 404:
                if resubmitted:
                    raise RewardError(
                        f"{_describe(ep, base)} lost job {job_id} too (HTTP 404: "
                        f"{_problem_detail(resp)}), the second job for these items"
                    )
                logger.warning(
                    "%s no longer knows job %s (HTTP 404: %s; restarted without a persistent "
                    "rating database?); submitting its items again as a new job, once; "
                    "ratings given to the lost job are not used",
                    _describe(ep, base),
                    job_id,
                    _problem_detail(resp),
                )
                job_id, base = await self._submit_job(ep, body, stop_at, label, pending)
                resubmitted = True
                continue
            try:
                status = JobStatus.model_validate_json(resp.content)
            except ValidationError as exc:
                raise RewardError(f"{_describe(ep)} sent an invalid job status: {exc}") from None
            if status.status != "pending" or self._deadline_clock() >= stop_at:
                break
        n = len(status.scores)
        scores = np.array([np.nan if s is None else s for s in status.scores], dtype=np.float64)
        missing = [i for i in range(n) if status.scores[i] is None]
        batch.counts["rated"] += n - len(missing)
        if status.status == "pending":  # we stop waiting: free the raters from this job
            with contextlib.suppress(httpx.HTTPError):
                await self._http.delete(
                    f"{base}/v1/jobs/{job_id}",
                    headers=_headers(ep.api_key),
                    timeout=ep.timeout_s,
                )
        if not missing:
            return scores
        why = (
            f"{_describe(ep)}: {len(missing)} of {n} items lack ratings "
            f"(job {job_id} {status.status}, {status.ratings_per_item} needed per item)"
        )
        if ep.missing == "fail":
            raise RewardError(why + "; set missing = 'drop' or 'fallback' to go on without them")
        if ep.missing == "drop":
            logger.warning("%s; dropping them", why)
            batch.counts["dropped"] += len(missing)
            return scores
        assert ep.fallback_scorer is not None
        logger.warning("%s; scoring them with %r", why, ep.fallback_scorer)
        loop = asyncio.get_running_loop()
        subset = await loop.run_in_executor(
            self._executor, _encode_indices, batch, [start + i for i in missing]
        )
        fallback_ep = ep.model_copy(update={"scorer": ep.fallback_scorer, "mode": "sync"})
        filled = await self._post_with_retries(
            fallback_ep, _score_body(ep.fallback_scorer, subset), len(missing), label, pending
        )
        scores[missing] = filled
        batch.counts["filled"] += len(missing)
        return scores

    async def _submit_job(
        self, ep: RewardEndpoint, body: bytes, stop_at: float, label: str, pending: dict[str, str]
    ) -> tuple[str, str]:
        """POST the job; its id and the replica that accepted it (which its polls stay on)."""
        lifetime = max(1.0, stop_at - self._deadline_clock())
        resp, base = await self._request(
            ep, "POST", f"/v1/jobs?deadline_s={lifetime:.3f}", label, pending, content=body
        )
        try:
            return JobAccepted.model_validate_json(resp.content).job_id, base
        except ValidationError as exc:
            raise RewardError(f"{_describe(ep)} sent an invalid job answer: {exc}") from None

    async def _check_ready(self, timeout_s: float) -> list[str]:
        """Problems that leave some endpoint with no usable replica; warn about the others."""
        by_url: dict[str, list[int]] = {}
        for i, ep in enumerate(self.endpoints):
            for u in ep.urls:
                by_url.setdefault(_base_url(u), []).append(i)
        urls = list(by_url)
        results = await asyncio.gather(
            *(
                self._check_url(url, [self.endpoints[i] for i in by_url[url]], timeout_s)
                for url in urls
            )
        )
        found: dict[tuple[int, str], list[str]] = {}  # (endpoint, url) -> problems
        for url, per_ep in zip(urls, results, strict=True):
            for i, problems in zip(by_url[url], per_ep, strict=True):
                found[(i, url)] = problems
        now = time.monotonic()
        errors: list[str] = []
        warned: set[str] = set()
        for i, ep in enumerate(self.endpoints):
            bases = [_base_url(u) for u in ep.urls]
            bad = [p for b in bases for p in found[(i, b)]]
            if any(not found[(i, b)] for b in bases):
                for b in bases:
                    if found[(i, b)]:
                        self._down_until[b] = now + self.failover_cooldown_s
                for p in bad:
                    if p not in warned:
                        warned.add(p)
                        logger.warning("%s (another replica is ready)", p)
            else:
                errors.extend(p for p in bad if p not in errors)
        return errors

    async def _check_url(
        self, url: str, eps: list[RewardEndpoint], timeout_s: float
    ) -> list[list[str]]:
        """Problems with each of `eps` on this one server."""
        server_problems = await self._check_server(url, eps, timeout_s)
        if isinstance(server_problems, str):
            return [[server_problems] for _ in eps]
        return server_problems

    async def _check_server(
        self, url: str, eps: list[RewardEndpoint], timeout_s: float
    ) -> str | list[list[str]]:
        api_key = next((ep.api_key for ep in eps if ep.api_key), None)
        headers = _headers(api_key)
        timeout = httpx.Timeout(timeout_s)
        try:
            ready = await self._http.get(f"{url}/readyz", headers=headers, timeout=timeout)
            if ready.status_code != 200:
                return (
                    f"reward server {url} is not ready: HTTP {ready.status_code}: "
                    f"{_problem_detail(ready)}"
                )
            listing = await self._http.get(f"{url}/v1/scorers", headers=headers, timeout=timeout)
        except httpx.ConnectError as exc:
            return f"reward server {url} is unreachable (connection refused?): {exc}"
        except httpx.TransportError as exc:
            return f"reward server {url} did not answer: {type(exc).__name__}: {exc}"
        if listing.status_code != 200:
            return (
                f"reward server {url}: GET /v1/scorers gave HTTP {listing.status_code}: "
                f"{_problem_detail(listing)}"
            )
        try:
            kinds = {
                s.name: s.kind for s in ScorerList.model_validate_json(listing.content).scorers
            }
        except ValidationError as exc:
            return f"reward server {url}: GET /v1/scorers is not a scorer list: {exc}"
        self._kinds[url] = kinds
        served = list(kinds)
        per_ep: list[list[str]] = []
        for ep in eps:
            problems: list[str] = []
            per_ep.append(problems)
            if ep.scorer not in kinds:
                problems.append(
                    f"reward server {url} does not serve scorer {ep.scorer!r}; "
                    f"available: {', '.join(served) or '(none)'}"
                )
            elif ep.mode != "auto" and ep.mode != kinds[ep.scorer]:
                problems.append(
                    f"reward server {url}: scorer {ep.scorer!r} is a {kinds[ep.scorer]} scorer, "
                    f"but the endpoint says mode = {ep.mode!r}"
                )
            if ep.missing == "fallback" and kinds.get(ep.fallback_scorer or "") != "sync":
                problems.append(
                    f"reward server {url}: fallback scorer {ep.fallback_scorer!r} is not a "
                    f"sync scorer it serves; available: {', '.join(served) or '(none)'}"
                )
        return per_ep


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _parse_scores(resp: httpx.Response, ep: RewardEndpoint, n: int) -> np.ndarray:
    """Check the response is a ScoreResponse with one finite score per item."""
    try:
        parsed = ScoreResponse.model_validate_json(resp.content)
    except ValidationError as exc:
        raise RewardError(f"{_describe(ep)} sent an invalid ScoreResponse: {exc}") from None
    if len(parsed.scores) != n:
        raise RewardError(f"{_describe(ep)} returned {len(parsed.scores)} scores for {n} items")
    scores = np.asarray(parsed.scores, dtype=np.float64)
    bad = [i for i, s in enumerate(parsed.scores) if not math.isfinite(s)]
    if bad:
        raise RewardError(
            f"{_describe(ep)} returned non-finite scores at positions {bad[:10]} of the request"
        )
    return scores


async def _all_or_cancel(tasks: list[asyncio.Future[Any]]) -> None:
    """Like gather, but the first failure cancels the siblings instead of leaving them running."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
