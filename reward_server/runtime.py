"""`ServerRuntime`, the live state of one app, and the dependency that reaches it.

All state lives on the app (`app.state.runtime`), reached through `Runtime`,
so tests and embedders can run several apps in one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, Request

from reward_server.batching import DynamicBatcher, ScoringQueue
from reward_server.observability import ServerMetrics
from reward_server.problems import NOT_READY, RATINGS_DISABLED, UNKNOWN_SCORER, ProblemError
from reward_server.rating_signal import RatingSignal
from reward_server.rating_store import RatingStoreOpener
from reward_server.scorers.base import Scorer
from reward_server.scorers.registry import ScorerRegistry, build_scorers
from reward_server.settings import ServerSettings

if TYPE_CHECKING:
    from reward_server.storage import RatingStore

log = logging.getLogger(__name__)

#: Builds the queue of one sync scorer: (name, scorer, settings, metrics) -> queue.
BatcherFactory = Callable[[str, Scorer, ServerSettings, ServerMetrics], ScoringQueue]


def local_batcher(
    name: str, scorer: Scorer, settings: ServerSettings, metrics: ServerMetrics
) -> ScoringQueue:
    """The default: batches coalesced in this process, on the scorer's own thread."""
    wait_s = settings.batch_max_wait_ms / 1000.0
    return DynamicBatcher(scorer, max_wait_s=wait_s, name=name, on_batch=metrics.observe_batch)


class ServerRuntime:
    """The live state of one app: settings, scorers, their batchers, the rating store,
    readiness. It owns the rating store and closes it when the app stops.
    """

    def __init__(
        self,
        settings: ServerSettings,
        scorers: dict[str, Scorer] | None,
        registry: ScorerRegistry | None = None,
        rating_store: RatingStore | None = None,
        batcher_factory: BatcherFactory = local_batcher,
    ) -> None:
        if scorers is not None and rating_store is None:
            needy = [name for name, s in scorers.items() if s.kind == "job"]
            if needy:
                raise ValueError(f"job scorer(s) {', '.join(needy)} need a rating_store")
        self.settings = settings
        self.registry = registry
        self.scorers: dict[str, Scorer] = {}
        self.batchers: dict[str, ScoringQueue] = {}
        self._batcher_factory = batcher_factory
        self.rating_store = rating_store
        self.rating_signal = RatingSignal()
        self.status: Literal["ok", "starting", "unavailable"] = "starting"
        self.error: str | None = None
        self.metrics = ServerMetrics()
        self.draining = False
        self._given = scorers
        self._loading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._given is not None:
            self._activate(self._given)
        else:
            # Loading weights can take minutes: do it in the background so /healthz
            # answers meanwhile and /readyz says when scoring can begin.
            self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        opener = RatingStoreOpener(self.settings)
        try:
            scorers = await asyncio.to_thread(
                build_scorers, self.settings, self.settings.scorers, self.registry, opener
            )
        except Exception as exc:
            opener.close()
            log.error("loading scorers failed: %s", exc)
            self.status, self.error = "unavailable", str(exc)
            return
        if not any(s.kind == "job" for s in scorers.values()):
            opener.close()  # the rating scorers that opened it failed after all
        self.rating_store = opener.store
        self._activate(scorers)

    def _activate(self, scorers: dict[str, Scorer]) -> None:
        self.scorers = dict(scorers)
        self.batchers = {
            name: self._batcher_factory(name, scorer, self.settings, self.metrics)
            for name, scorer in self.scorers.items()
            if scorer.kind == "sync"  # job scorers (human ratings) answer via /v1/jobs
        }
        if self.scorers:
            self.status = "ok"
        else:
            self.status, self.error = "unavailable", "no scorer could be loaded"
        log.info("ready: scorers %s", ", ".join(self.scorers) or "none")

    def begin_drain(self) -> None:
        """Shutdown has begun: report not-ready and refuse new scoring; in-flight work finishes."""
        if not self.draining:
            log.info("shutting down: finishing in-flight requests, refusing new ones")
        self.draining = True

    async def stop(self) -> None:
        self.begin_drain()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        await asyncio.gather(*(b.aclose() for b in self.batchers.values()))
        for scorer in self.scorers.values():
            close = getattr(scorer, "close", None)
            if callable(close):
                close()
        if self.rating_store is not None:
            self.rating_store.close()

    def require_ready(self) -> None:
        if self.draining:
            raise ProblemError(
                503, "the server is shutting down; retry on another replica", NOT_READY
            )
        if self.status == "starting":
            raise ProblemError(
                503, "scorers are still loading; retry shortly", NOT_READY, {"Retry-After": "5"}
            )
        if self.status != "ok":
            raise ProblemError(503, f"no scorers available: {self.error}", NOT_READY)

    def batcher(self, name: str) -> ScoringQueue:
        self.require_ready()
        batcher = self.batchers.get(name)
        if batcher is None and name in self.scorers:
            raise ProblemError(
                422,
                f"scorer: {name!r} is a job scorer (its scores come later); "
                "submit it with POST /v1/jobs",
                UNKNOWN_SCORER,
            )
        if batcher is None:
            raise ProblemError(
                422,
                f"scorer: unknown scorer {name!r}; available: {', '.join(self.batchers)}",
                UNKNOWN_SCORER,
            )
        return batcher

    def job_scorers(self) -> dict[str, Scorer]:
        return {name: s for name, s in self.scorers.items() if s.kind == "job"}

    def require_rating_store(self) -> RatingStore:
        """The rating store, or 404: this server was started without a human scorer."""
        if self.rating_store is None:
            raise ProblemError(
                404,
                "human ratings are not enabled on this server: start it with the `human` "
                "(or `human_pairwise`) scorer",
                RATINGS_DISABLED,
            )
        return self.rating_store


def get_runtime(request: Request) -> ServerRuntime:
    return request.app.state.runtime


Runtime = Annotated[ServerRuntime, Depends(get_runtime)]
