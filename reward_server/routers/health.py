"""/healthz, /readyz and /metrics: what load balancers and Prometheus ask."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from reward_server.problems import NOT_READY, problem_response, problem_responses
from reward_server.runtime import Runtime
from shared.protocol import Health

router = APIRouter()


@router.get("/healthz", response_model=Health)
async def healthz(runtime: Runtime) -> Health:
    """Liveness: the process answers. 200 even while scorers load."""
    return Health(status=runtime.status, scorers=list(runtime.scorers))


@router.get("/readyz", response_model=Health, responses=problem_responses(503))
async def readyz(runtime: Runtime) -> Health | JSONResponse:
    """Readiness: 200 only once scorers are loaded and can score."""
    if runtime.draining:
        return problem_response(503, "not ready: shutting down", NOT_READY, "/readyz")
    if runtime.status != "ok":
        detail = "scorers are still loading" if runtime.status == "starting" else runtime.error
        return problem_response(503, f"not ready: {detail}", NOT_READY, "/readyz")
    return Health(status="ok", scorers=list(runtime.scorers))


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
)
async def metrics(runtime: Runtime) -> Response:
    """Prometheus text format: requests, latency, batch sizes, queue depth, errors."""
    body, content_type = runtime.metrics.render()
    return Response(body, media_type=content_type)
