"""The reward server's FastAPI app: `create_app(settings, scorers)` assembles it.

Settings, the runtime (all state, on `app.state.runtime`), middleware, problem
handlers, the routers of `reward_server/routers/`, the lifespan that starts
and stops the runtime, and the OpenAPI schema. The routes themselves live in
the routers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from reward_server.body_limit import BodyLimitMiddleware
from reward_server.observability import ObservabilityMiddleware
from reward_server.problems import install_problem_handlers
from reward_server.routers import admin, health, jobs, rater_api, rating_pages, score
from reward_server.runtime import BatcherFactory, ServerRuntime, local_batcher
from reward_server.scorers.base import Scorer
from reward_server.scorers.registry import ScorerRegistry
from reward_server.settings import ServerSettings
from shared.protocol import PROTOCOL_VERSION, Problem, ScoreRequest

if TYPE_CHECKING:
    from reward_server.storage import RatingStore


def _install_openapi(app: FastAPI) -> None:
    """Add the protocol models FastAPI cannot see (we parse the score body ourselves)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (ScoreRequest, Problem):
                extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(extra.pop("$defs", {}))
                components[model.__name__] = extra
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime: ServerRuntime = app.state.runtime
    await runtime.start()
    try:
        yield
    finally:
        await runtime.stop()


def create_app(
    settings: ServerSettings,
    scorers: dict[str, Scorer] | None = None,
    registry: ScorerRegistry | None = None,
    rating_store: RatingStore | None = None,
    batcher_factory: BatcherFactory = local_batcher,
) -> FastAPI:
    """Build the app. With scorers=None they are built from settings after start-up
    (opening the rating store if a human scorer is named); given job scorers need the
    rating_store they were built on. The app closes the rating store when it stops.
    batcher_factory builds each sync scorer's queue (Ray Serve: one that calls replicas).
    """
    app = FastAPI(
        title="DDPO reward server",
        version=PROTOCOL_VERSION,
        description="Scores generated images for RL fine-tuning. Protocol: docs/protocol.md.",
        lifespan=_lifespan,
    )
    app.state.runtime = runtime = ServerRuntime(
        settings, scorers, registry, rating_store, batcher_factory
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: it counts and tags everything, the body limit's 413s too.
    app.add_middleware(ObservabilityMiddleware, metrics=runtime.metrics)
    install_problem_handlers(app)
    app.include_router(score.router)  # /v1/score, /v1/scorers
    app.include_router(jobs.router)  # /v1/jobs
    app.include_router(rating_pages.router)  # /rate
    app.include_router(rater_api.router)  # /rate/api
    app.include_router(admin.router)  # /admin
    app.include_router(health.router)  # /healthz, /readyz, /metrics
    _install_openapi(app)
    return app


__all__ = ["create_app"]
