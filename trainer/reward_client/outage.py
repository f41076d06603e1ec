"""Endpoint outages: telling one apart from a bad request, and waiting it out.

A server restart (OOM kill, upgrade, reloading weights) looks like refused or
reset connections, timeouts or 502/503/504 for tens of seconds, which would
use up `max_retries` in seconds. So once the retries of a request are spent
on such errors, the endpoint's replicas are asked `/readyz`: if one is ready,
the request itself is at fault and fails as before; if none is, the endpoint
is down, and every request to it waits (one readiness probe every `probe_s`,
one log line every `log_every_s`) and is sent again when a replica is back,
for up to the endpoint's `outage_budget_s` of downtime per request. While any
endpoint is down the deadline clock stands still, so an outage is bounded by
its budget, not by the batch deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx

from trainer.config import RewardEndpoint
from trainer.reward_client.deadline_clock import DeadlineClock
from trainer.reward_client.endpoints import auth_headers, describe
from trainer.reward_client.errors import RewardError
from trainer.reward_client.parsing import problem_detail
from trainer.reward_client.replicas import Replicas

logger = logging.getLogger(__package__)  # the package's logger, "trainer.reward_client"

#: Statuses that say the server (or the gateway's upstream) is down, not that the request is bad.
OUTAGE_STATUSES = {502, 503, 504}


@dataclass
class Outage:
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


class Outages:
    """The endpoints now down, keyed by their replica base URLs; event-loop thread only."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        replicas: Replicas,
        clock: DeadlineClock,
        probe_s: float,
        log_every_s: float,
    ) -> None:
        self._http = http
        self._replicas = replicas
        self._clock = clock
        self.probe_s = probe_s
        self.log_every_s = log_every_s
        self._down: dict[tuple[str, ...], Outage] = {}

    def get(self, key: tuple[str, ...]) -> Outage | None:
        """The outage of the endpoint with these replicas, if it is down."""
        return self._down.get(key)

    def where_down(self) -> list[str]:
        """Replica URLs (comma-joined per endpoint) now waited on; safe from any thread."""
        return [o.where for o in list(self._down.values())]

    async def ride_out(
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
        outage = self._down.get(key)
        if outage is None:
            problems = await self._probe_all(ep, key)
            if any(p is None for p in problems):
                return None
            outage = self._down.get(key)  # another request may have declared it meanwhile
            if outage is None:
                outage = self._declare(ep, key, since, problems[0] or reason)
        return await self.wait_out(ep, key, outage, label, pending, down_s)

    async def wait_out(
        self,
        ep: RewardEndpoint,
        key: tuple[str, ...],
        outage: Outage,
        label: str,
        pending: dict[str, str],
        down_s: float,
    ) -> float:
        """Wait for the endpoint to be back; RewardError once this endpoint's budget is spent.

        Returns how long the endpoint was down. `down_s` is what this request
        already spent on earlier outages, against the same budget.
        """
        outage.waiters += 1
        outage.budget_s = max(outage.budget_s, ep.outage_budget_s)
        pending[label] = f"waiting for {outage.where} to come back"
        try:
            left = ep.outage_budget_s - down_s - (time.monotonic() - outage.since)
            if not outage.back.is_set():
                async with asyncio.timeout(max(left, 0.0)):
                    await outage.back.wait()
        except TimeoutError:
            down = time.monotonic() - outage.since
            earlier = f", after {down_s:.0f}s down earlier" if down_s else ""
            raise RewardError(
                f"{describe(ep, outage.where)} is down: no replica ready for {down:.0f}s"
                f"{earlier}, past its outage budget (outage_budget_s = {ep.outage_budget_s:g}); "
                f"last error: {outage.reason}"
            ) from None
        finally:
            outage.waiters -= 1
            if outage.waiters == 0 and not outage.back.is_set():
                self._end(key, outage, back=False)  # every waiter gave up
        assert outage.ended is not None
        return outage.ended - outage.since

    def _declare(
        self, ep: RewardEndpoint, key: tuple[str, ...], since: float, reason: str
    ) -> Outage:
        now = time.monotonic()
        outage = Outage(",".join(key), since, reason, ep.outage_budget_s, last_log=now)
        self._down[key] = outage
        self._clock.hold()
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

    async def _watch(self, ep: RewardEndpoint, key: tuple[str, ...], outage: Outage) -> None:
        """Probe the replicas until one is ready; log now and then meanwhile."""
        while True:
            await asyncio.sleep(self.probe_s)
            problems = await self._probe_all(ep, key)
            ready = [b for b, p in zip(key, problems, strict=True) if p is None]
            if ready:
                for b in ready:
                    self._replicas.healthy(b)
                self._end(key, outage, back=True)
                return
            outage.reason = problems[0] or outage.reason
            now = time.monotonic()
            if now - outage.last_log >= self.log_every_s:
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

    def _end(self, key: tuple[str, ...], outage: Outage, back: bool) -> None:
        if outage.ended is not None:
            return
        outage.ended = time.monotonic()
        if self._down.get(key) is outage:
            del self._down[key]
        self._clock.release()
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
                headers=auth_headers(ep.api_key),
                timeout=httpx.Timeout(min(ep.timeout_s, 10.0), pool=None),
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if resp.status_code == 200:
            return None
        return f"/readyz: HTTP {resp.status_code}: {problem_detail(resp)}"
