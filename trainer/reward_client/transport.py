"""Sending one request to an endpoint: replica choice, retries with backoff, failover.

Connection errors and 5xx fail over at once to a replica not yet tried,
without using up a retry; 408, 429 and 5xx are retried with jittered
exponential backoff; other 4xx fail at once. When the retries end on what
looks like an outage the request waits it out (see `outage.py`) and starts over.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Collection

import httpx
import numpy as np

from trainer.config import RewardEndpoint
from trainer.reward_client.endpoints import auth_headers, base_url, describe
from trainer.reward_client.errors import RewardError
from trainer.reward_client.outage import OUTAGE_STATUSES, Outages
from trainer.reward_client.parsing import parse_scores, problem_detail, retry_after
from trainer.reward_client.replicas import Replicas

logger = logging.getLogger(__package__)  # the package's logger, "trainer.reward_client"

#: Statuses worth retrying: the server may recover (overload, restart, gateway).
_RETRY_4XX = {408, 429}


class Sender:
    """Sends requests for every endpoint of one client; event-loop thread only."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        replicas: Replicas,
        outages: Outages,
        backoff_base_s: float,
        backoff_max_s: float,
    ) -> None:
        self._http = http
        self._replicas = replicas
        self._outages = outages
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s

    async def post_scores(
        self, ep: RewardEndpoint, body: bytes, n: int, label: str, pending: dict[str, str]
    ) -> np.ndarray:
        """POST /v1/score with retries; the `n` scores it returned."""
        resp, _ = await self.request(ep, "POST", "/v1/score", label, pending, content=body)
        return parse_scores(resp, ep, n)

    async def request(
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
        outage the request waits it out and starts over. `pending[label]` says
        what the request is doing, for the deadline message.
        """
        replicas = self._replicas
        bases = [pin] if pin is not None else [base_url(u) for u in ep.urls]
        key = tuple(bases)
        rides_out = ep.outage_budget_s > 0
        headers = auth_headers(ep.api_key)
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
                down_s += await self._outages.wait_out(ep, key, outage, label, pending, down_s)
                attempt, streak = 0, None
                tried.clear()
            base = replicas.pick(bases, tried)
            tried.add(base)
            tries += 1
            wait_hint: float | None = None
            failed_over = False
            with replicas.in_flight(base):
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
                        replicas.healthy(base)
                        return resp, base
                    reason = f"HTTP {status}: {problem_detail(resp)}"
                    if status < 500 and status not in _RETRY_4XX:
                        raise RewardError(f"{describe(ep, base)} rejected the request: {reason}")
                    wait_hint = retry_after(resp)
                    failed_over = status >= 500
                    looks_down = status in OUTAGE_STATUSES
            streak = time.monotonic() if streak is None else streak
            if failed_over and len(ep.urls) > 1:
                now = time.monotonic()
                if not replicas.cooling(base, now):
                    logger.warning(
                        "%s: %s; avoiding it for %gs",
                        describe(ep, base),
                        reason,
                        replicas.cooldown_s,
                    )
                replicas.avoid(base, now)
                if pin is None and any(
                    b not in tried and not replicas.cooling(b, now) for b in bases
                ):
                    pending[label] = f"failing over after {reason}"
                    continue
            if looks_down and rides_out and self._outages.get(key) is not None:
                continue  # declared down meanwhile: join the wait instead of retrying
            if attempt >= ep.max_retries:
                if looks_down and rides_out:
                    waited = await self._outages.ride_out(
                        ep, key, streak, reason, label, pending, down_s
                    )
                    if waited is not None:
                        down_s += waited
                        attempt, streak = 0, None
                        tried.clear()
                        continue
                last = f" (last on {base})" if len(bases) > 1 else ""
                raise RewardError(f"{describe(ep)} failed after {tries} attempts: {reason}{last}")
            delay = self.backoff(attempt, wait_hint)
            attempt += 1
            tried.clear()
            logger.warning(
                "%s: %s; retry %d/%d in %.2fs",
                describe(ep, base),
                reason,
                attempt,
                ep.max_retries,
                delay,
            )
            pending[label] = f"retry {attempt} after {reason}"
            await asyncio.sleep(delay)

    def backoff(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential with jitter, so many trainer ranks don't retry in lockstep."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        delay *= random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.backoff_max_s))
        return delay
