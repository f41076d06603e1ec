"""The ingress deployment: our FastAPI app as it is, served by Ray Serve's HTTP proxy.

Each replica builds the same app as `ddpo serve` (routes, auth, problem+json,
body and pixel limits, the rating queue): the light scorers and rating scorers
run here, in this process, with the usual DynamicBatcher; each model scorer is
a `RemoteScorer` whose queue calls its deployment. The API key rule of the
plain server holds: without a key the ingress refuses to start, since a Ray
cluster's proxies listen on every node (set allow_unauthenticated_public to
override, as for `ddpo serve`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from ray import serve

from reward_server.app import create_app
from reward_server.batching import ScoringQueue
from reward_server.observability import ServerMetrics
from reward_server.rating_store import RatingStoreOpener
from reward_server.ray_serve.options import IngressOptions
from reward_server.ray_serve.remote import RemoteScorer, ReplicaQueue
from reward_server.runtime import local_batcher
from reward_server.scorers.base import Scorer
from reward_server.scorers.registry import build_scorers, default_registry
from reward_server.settings import ServerSettings

log = logging.getLogger("ray.serve")


class UnauthenticatedCluster(RuntimeError):
    """No API key, and unauthenticated access was not allowed explicitly."""


def ingress_settings(overrides: dict[str, Any]) -> ServerSettings:
    settings = ServerSettings(**overrides)
    if not settings.auth_required and not settings.allow_unauthenticated_public:
        raise UnauthenticatedCluster(
            "no API key (settings.api_keys or DDPO_API_KEYS): refusing to serve an "
            "unauthenticated API on a Ray cluster; set allow_unauthenticated_public to override"
        )
    return settings


@serve.ingress()
class RewardIngress:
    """Deployed as `ingress` by reward_server.ray_serve.app."""

    async def __init__(
        self,
        settings: dict[str, Any],
        in_ingress: list[str],
        handles: dict[str, Any],
        options: IngressOptions,
    ) -> None:
        self.settings = ingress_settings(settings)
        self.retries = options.replica_retries
        opener = RatingStoreOpener(self.settings)  # handed to the app, which closes it
        local = build_scorers(self.settings, in_ingress, default_registry(), opener)
        remote = {name: RemoteScorer(await h.describe.remote(), h) for name, h in handles.items()}
        order = self.settings.scorers or []
        merged: dict[str, Scorer] = {**local, **remote}
        scorers = {name: merged[name] for name in order if name in merged}
        log.info(
            "ingress: %s here, %s on their own deployments",
            ", ".join(local) or "no scorer",
            ", ".join(remote) or "none",
        )
        self.fastapi_app = create_app(
            self.settings, scorers, rating_store=opener.store, batcher_factory=self._queue
        )

    def _queue(
        self, name: str, scorer: Scorer, settings: ServerSettings, metrics: ServerMetrics
    ) -> ScoringQueue:
        if isinstance(scorer, RemoteScorer):
            return ReplicaQueue(scorer, metrics, retries=self.retries)
        return local_batcher(name, scorer, settings, metrics)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.fastapi_app
