"""The reward server's FastAPI app: `create_app(settings, scorers)`.

All state lives on the app (`app.state.runtime`), reached through
dependencies, so tests and embedders can run several apps in one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from reward_server.batching import BatcherClosed, DynamicBatcher, ScorerFailed
from reward_server.body_limit import BodyLimitMiddleware
from reward_server.human_routes import forbid_rater_token, human_router
from reward_server.observability import ObservabilityMiddleware, ServerMetrics
from reward_server.problems import (
    INVALID_IMAGE,
    INVALID_JSON,
    INVALID_REQUEST,
    NOT_READY,
    PROBLEM_MEDIA_TYPE,
    SCORER_FAILED,
    TOO_MANY_ITEMS,
    TOO_MANY_PIXELS,
    UNAUTHORIZED,
    UNKNOWN_SCORER,
    UNSUPPORTED_MEDIA_TYPE,
    ProblemError,
    describe_errors,
    install_problem_handlers,
    problem_response,
)
from reward_server.scorers.base import Scorer, ScorerNotReady
from reward_server.scorers.registry import ScorerRegistry, build_scorers
from reward_server.settings import ServerSettings
from shared.images import ImageDecodeError, decode_image
from shared.protocol import (
    PROTOCOL_VERSION,
    Health,
    Problem,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    ScorerInfo,
    ScorerList,
)

log = logging.getLogger(__name__)


class ServerRuntime:
    """The live state of one app: settings, scorers, their batchers, readiness."""

    def __init__(
        self,
        settings: ServerSettings,
        scorers: dict[str, Scorer] | None,
        registry: ScorerRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.scorers: dict[str, Scorer] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
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
        try:
            scorers = await asyncio.to_thread(
                build_scorers, self.settings, self.settings.scorers, self.registry
            )
        except Exception as exc:
            log.error("loading scorers failed: %s", exc)
            self.status, self.error = "unavailable", str(exc)
            return
        self._activate(scorers)

    def _activate(self, scorers: dict[str, Scorer]) -> None:
        wait_s = self.settings.batch_max_wait_ms / 1000.0
        self.scorers = dict(scorers)
        self.batchers = {
            name: DynamicBatcher(
                scorer, max_wait_s=wait_s, name=name, on_batch=self.metrics.observe_batch
            )
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

    def batcher(self, name: str) -> DynamicBatcher:
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


def get_runtime(request: Request) -> ServerRuntime:
    return request.app.state.runtime


Runtime = Annotated[ServerRuntime, Depends(get_runtime)]

_bearer = HTTPBearer(auto_error=False, description="One of the server's API keys (DDPO_API_KEYS).")


async def require_api_key(
    runtime: Runtime,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Bearer-key check on /v1/*; a no-op when the server has no keys configured."""
    settings = runtime.settings
    if credentials is not None and not settings.check_api_key(credentials.credentials):
        await forbid_rater_token(runtime, credentials.credentials)  # 403, not 401
    if not settings.auth_required:
        return
    challenge = {"WWW-Authenticate": 'Bearer realm="ddpo-reward"'}
    if credentials is None:
        raise ProblemError(
            401, "missing API key: send `Authorization: Bearer <key>`", UNAUTHORIZED, challenge
        )
    if not settings.check_api_key(credentials.credentials):
        raise ProblemError(401, "invalid API key", UNAUTHORIZED, challenge)


def parse_score_request(raw: bytes, max_items: int) -> ScoreRequest:
    """Validate the body ourselves so each failure gets its own status and a clear detail."""
    if not raw.strip():
        raise ProblemError(400, "request body is empty; send a JSON ScoreRequest", INVALID_JSON)
    try:
        request = ScoreRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        bad_json = [e for e in errors if e["type"] == "json_invalid"]
        if bad_json:
            reason = bad_json[0].get("ctx", {}).get("error") or bad_json[0]["msg"]
            raise ProblemError(
                400, f"request body is not valid JSON: {reason}", INVALID_JSON
            ) from None
        too_many = [e for e in errors if e["loc"] == ("items",) and e["type"] == "too_long"]
        if too_many:
            raise ProblemError(
                422,
                f"items: too many items; this server accepts at most {max_items} per request",
                TOO_MANY_ITEMS,
            ) from None
        raise ProblemError(422, describe_errors(errors), INVALID_REQUEST) from None
    if len(request.items) > max_items:
        raise ProblemError(
            422,
            f"items: {len(request.items)} items; this server accepts at most {max_items} "
            "per request",
            TOO_MANY_ITEMS,
        )
    return request


def decode_items(
    items: list[ScoreItem], max_pixels: int, max_request_pixels: int
) -> list[Image.Image]:
    """Decode every image (in a worker thread), naming the item that fails."""
    images: list[Image.Image] = []
    total = 0
    for i, item in enumerate(items):
        try:
            image = decode_image(item.image, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            raise ProblemError(422, f"items[{i}].image: {exc}", INVALID_IMAGE) from None
        except Exception as exc:  # a Pillow failure shared.images did not anticipate
            raise ProblemError(
                422, f"items[{i}].image: cannot decode image: {exc}", INVALID_IMAGE
            ) from None
        total += image.width * image.height
        if total > max_request_pixels:
            raise ProblemError(
                422,
                f"items[{i}].image: the request's images total more than "
                f"{max_request_pixels} pixels; send fewer or smaller images per request",
                TOO_MANY_PIXELS,
            )
        images.append(image)
    return images


def _problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    ref = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {"description": "Problem details", "content": {PROBLEM_MEDIA_TYPE: {"schema": ref}}}
        for status in statuses
    }


def _v1_router() -> APIRouter:
    router = APIRouter(prefix=f"/{PROTOCOL_VERSION}", dependencies=[Depends(require_api_key)])

    @router.get("/scorers", response_model=ScorerList, responses=_problem_responses(401, 503))
    async def list_scorers(runtime: Runtime) -> ScorerList:
        """The scorers this server can run, with their versions."""
        runtime.require_ready()
        return ScorerList(
            scorers=[
                ScorerInfo(name=name, version=s.version, description=s.description, kind=s.kind)
                for name, s in runtime.scorers.items()
            ]
        )

    @router.post(
        "/score",
        response_model=ScoreResponse,
        response_model_exclude_none=False,
        responses=_problem_responses(400, 401, 413, 415, 422, 500, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}
                },
            }
        },
    )
    async def score(request: Request, runtime: Runtime) -> ScoreResponse:
        """Score a batch of images; scores come back in request order."""
        content_type = request.headers.get("content-type", "application/json")
        media = content_type.split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise ProblemError(
                415,
                f"Content-Type {media!r} is not supported; send application/json",
                UNSUPPORTED_MEDIA_TYPE,
            )
        settings = runtime.settings
        body = parse_score_request(await request.body(), settings.max_items)
        batcher = runtime.batcher(body.scorer)
        images = await run_in_threadpool(
            decode_items, body.items, settings.max_pixels, settings.max_request_pixels
        )
        depth = runtime.metrics.queue_depth.labels(body.scorer)
        depth.inc(len(images))
        try:
            scored = await batcher.submit_versioned(images, [item.prompt for item in body.items])
        except (BatcherClosed, ScorerNotReady) as exc:
            raise ProblemError(503, str(exc), NOT_READY) from None
        except ScorerFailed as exc:
            raise ProblemError(500, str(exc), SCORER_FAILED) from None
        finally:
            depth.dec(len(images))
        details = scored.details
        merged = [
            {**(details[i] if details is not None else {}), "id": item.id}
            for i, item in enumerate(body.items)
        ]
        return ScoreResponse(
            scorer=body.scorer, version=scored.version, scores=scored.scores, details=merged
        )

    return router


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


def create_app(
    settings: ServerSettings,
    scorers: dict[str, Scorer] | None = None,
    registry: ScorerRegistry | None = None,
) -> FastAPI:
    """Build the app. With scorers=None they are built from settings after start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime: ServerRuntime = app.state.runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="DDPO reward server",
        version=PROTOCOL_VERSION,
        description="Scores generated images for RL fine-tuning. Protocol: docs/protocol.md.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime = ServerRuntime(settings, scorers, registry)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: it counts and tags everything, the body limit's 413s too.
    app.add_middleware(ObservabilityMiddleware, metrics=runtime.metrics)
    install_problem_handlers(app)
    app.include_router(_v1_router())
    app.include_router(human_router())  # /v1/jobs, /rate, /admin
    _install_openapi(app)

    @app.get("/healthz", response_model=Health)
    async def healthz(runtime: Runtime) -> Health:
        """Liveness: the process answers. 200 even while scorers load."""
        return Health(status=runtime.status, scorers=list(runtime.scorers))

    @app.get("/readyz", response_model=Health, responses=_problem_responses(503))
    async def readyz(runtime: Runtime) -> Health | JSONResponse:
        """Readiness: 200 only once scorers are loaded and can score."""
        if runtime.draining:
            return problem_response(503, "not ready: shutting down", NOT_READY, "/readyz")
        if runtime.status != "ok":
            detail = "scorers are still loading" if runtime.status == "starting" else runtime.error
            return problem_response(503, f"not ready: {detail}", NOT_READY, "/readyz")
        return Health(status="ok", scorers=list(runtime.scorers))

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
    )
    async def metrics(runtime: Runtime) -> Response:
        """Prometheus text format: requests, latency, batch sizes, queue depth, errors."""
        body, content_type = runtime.metrics.render()
        return Response(body, media_type=content_type)

    return app


__all__ = ["ServerRuntime", "create_app", "get_runtime"]
