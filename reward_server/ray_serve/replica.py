"""A model scorer's deployment: the scorer loaded once per replica, batches across requests.

Each request's items enter one `@serve.batch` queue, so a device batch mixes
items of concurrent requests and a request larger than a batch is split, as the
plain server's DynamicBatcher does. Batches run one at a time on a worker
thread, so the replica's event loop keeps accepting requests meanwhile. Errors
are returned as answers, not raised, so the ingress maps them to the same
problem+json as the plain server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from PIL import Image
from ray import serve

from reward_server.batching import ScorerFailed, score_checked
from reward_server.ray_serve.remote import ReplicaAnswer
from reward_server.scorers.base import ScorerNotReady, ScorerUpstreamError
from reward_server.scorers.registry import default_registry
from reward_server.settings import ServerSettings
from shared.protocol import ScorerInfo

log = logging.getLogger("ray.serve")

Item = tuple[float, dict[str, Any] | None, str]


class ScorerReplica:
    """Deployed as `scorer_<name>` by reward_server.ray_serve.app (one per model scorer)."""

    def __init__(
        self,
        name: str,
        settings: dict[str, Any],
        max_batch_size: int | None,
        batch_wait_timeout_s: float,
    ) -> None:
        self.name = name
        # ScorerUnavailable here fails the replica's start: Serve reports it and retries.
        self.scorer = default_registry().build(name, ServerSettings(**settings))
        self._score_items.set_max_batch_size(max_batch_size or self.scorer.max_batch_size)
        self._score_items.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.replica = serve.get_replica_context().replica_id.unique_id
        log.info("scorer %s loaded on replica %s", name, self.replica)

    async def describe(self) -> ScorerInfo:
        s = self.scorer
        return ScorerInfo(name=self.name, version=s.version, description=s.description, kind=s.kind)

    async def score(self, images: list[Image.Image], prompts: list[str]) -> ReplicaAnswer:
        results = await asyncio.gather(
            *(self._score_items(i, p) for i, p in zip(images, prompts, strict=True)),
            return_exceptions=True,
        )
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            return self._failed(failure)
        items: list[Item] = results  # type: ignore[assignment]
        versions = list(dict.fromkeys(v for _, _, v in items))
        has_details = any(d is not None for _, d, _ in items)
        return ReplicaAnswer(
            scores=[s for s, _, _ in items],
            details=[d or {} for _, d, _ in items] if has_details else None,
            version=", ".join(versions),
            replica=self.replica,
        )

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _score_items(self, images: list[Image.Image], prompts: list[str]) -> list[Item]:
        scores, details = await asyncio.to_thread(
            score_checked, self.scorer, self.name, images, prompts
        )
        version = str(self.scorer.version)  # read after the batch: the weights that scored it
        return [
            (s, details[i] if details is not None else None, version) for i, s in enumerate(scores)
        ]

    def _failed(self, exc: BaseException) -> ReplicaAnswer:
        kind, status = "failed", 500
        if isinstance(exc, ScorerNotReady):
            kind, status = "not_ready", 503
        elif isinstance(exc, ScorerUpstreamError):
            kind, status = "upstream", exc.status
        elif not isinstance(exc, ScorerFailed):
            log.error("scorer %s: %s: %s", self.name, type(exc).__name__, exc)
        return ReplicaAnswer(
            [], None, str(self.scorer.version), self.replica, str(exc), kind, status
        )

    def __del__(self) -> None:
        close = getattr(getattr(self, "scorer", None), "close", None)
        if callable(close):
            close()
