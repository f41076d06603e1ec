"""The ingress side of a model scorer that runs in a deployment of its own.

`RemoteScorer` is what `/v1/scorers` lists (the replicas' own description);
`ReplicaQueue` takes the route's images to a replica through the deployment
handle. Scoring is idempotent, so a request whose replica died or became
unreachable is sent again (to another replica) a few times before the route
answers 503; each sample still gets exactly one score in the answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image
from prometheus_client import Counter
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

from reward_server.batching import BatcherClosed, Scored, ScorerFailed
from reward_server.observability import ServerMetrics
from reward_server.scorers.base import Scorer, ScorerNotReady, ScorerUpstreamError
from shared.protocol import ScorerInfo

log = logging.getLogger(__name__)

#: A replica gone (killed, its node lost) or not reachable: another one may answer.
REPLICA_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)


@dataclass(frozen=True)
class ReplicaAnswer:
    """What a scorer replica returns for one request: scores, or why it has none."""

    scores: list[float]
    details: list[dict[str, Any]] | None
    version: str
    replica: str
    error: str | None = None
    #: not_ready -> 503, upstream -> 502/504 (status), failed -> 500
    error_kind: Literal["not_ready", "upstream", "failed"] | None = None
    status: int | None = None


class RemoteScorer(Scorer):
    """A scorer whose replicas are elsewhere; this object holds its description and handle."""

    def __init__(self, info: ScorerInfo, handle: Any) -> None:
        self.name = info.name
        self.version = info.version
        self.description = info.description
        self.kind = info.kind
        self.handle = handle

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        raise RuntimeError(f"{self.name} is scored by its replicas (ReplicaQueue), not here")


class ReplicaMetrics:
    """Per-replica counts on the app's /metrics: which replica scored how many items."""

    def __init__(self, metrics: ServerMetrics) -> None:
        registry = metrics.registry
        existing = getattr(registry, "_ddpo_replica_metrics", None)
        if existing is not None:  # one set per app, shared by its scorers' queues
            self.items, self.retries = existing
            return
        self.items = Counter(
            "ddpo_replica_scored_items",
            "Items scored, by scorer and Ray Serve replica.",
            ["scorer", "replica"],
            registry=registry,
        )
        self.retries = Counter(
            "ddpo_replica_retries",
            "Requests sent again because a replica died or was unreachable.",
            ["scorer"],
            registry=registry,
        )
        registry._ddpo_replica_metrics = (self.items, self.retries)  # type: ignore[attr-defined]


class ReplicaQueue:
    """`ScoringQueue` over a deployment handle (see reward_server.batching.ScoringQueue)."""

    def __init__(
        self,
        scorer: RemoteScorer,
        metrics: ServerMetrics,
        retries: int = 3,
        backoff_s: float = 0.25,
    ) -> None:
        self.scorer = scorer
        self.retries = retries
        self.backoff_s = backoff_s
        self.counts = ReplicaMetrics(metrics)
        self._closed = False
        self._in_flight: set[asyncio.Task[ReplicaAnswer]] = set()

    async def submit_versioned(self, images: list[Image.Image], prompts: list[str]) -> Scored:
        if self._closed:
            raise BatcherClosed(f"scorer {self.scorer.name!r} is shutting down")
        if not images:
            return Scored([], None, self.scorer.version)
        task = asyncio.ensure_future(self._call(images, prompts))
        self._in_flight.add(task)
        try:
            answer = await asyncio.shield(task)
        finally:
            self._in_flight.discard(task)
        return self._unpack(answer, len(images))

    async def _call(self, images: list[Image.Image], prompts: list[str]) -> ReplicaAnswer:
        for attempt in range(self.retries + 1):
            try:
                return await self.scorer.handle.score.remote(images, prompts)
            except REPLICA_GONE as exc:
                if attempt == self.retries:
                    raise ScorerNotReady(
                        f"scorer {self.scorer.name!r}: no replica answered after "
                        f"{attempt + 1} attempts ({type(exc).__name__})"
                    ) from None
                self.counts.retries.labels(self.scorer.name).inc()
                log.warning(
                    "scorer %s: replica unavailable (%s); sending again",
                    self.scorer.name,
                    type(exc).__name__,
                )
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _unpack(self, answer: ReplicaAnswer, n: int) -> Scored:
        if answer.error_kind == "not_ready":
            raise ScorerNotReady(answer.error or "not ready")
        if answer.error_kind == "upstream":
            status = 504 if answer.status == 504 else 502
            raise ScorerUpstreamError(answer.error or "upstream failed", status)
        if answer.error_kind is not None or len(answer.scores) != n:
            raise ScorerFailed(answer.error or f"replica returned {len(answer.scores)} scores")
        self.scorer.version = answer.version
        self.counts.items.labels(self.scorer.name, answer.replica).inc(n)
        return Scored(list(answer.scores), answer.details, answer.version)

    async def aclose(self) -> None:
        """Refuse new work; let the requests already sent finish."""
        self._closed = True
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
