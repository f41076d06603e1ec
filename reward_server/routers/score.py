"""POST /v1/score and GET /v1/scorers: the trainer's synchronous scoring API."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from reward_server.auth import require_api_key
from reward_server.batching import BatcherClosed, ScorerFailed
from reward_server.problems import (
    NOT_READY,
    SCORER_FAILED,
    UPSTREAM_FAILED,
    ProblemError,
    problem_responses,
)
from reward_server.runtime import Runtime
from reward_server.score_request import decode_items, parse_score_request, require_json
from reward_server.scorers.base import ScorerNotReady, ScorerUpstreamError
from shared.protocol import PROTOCOL_VERSION, ScoreResponse, ScorerInfo, ScorerList

router = APIRouter(prefix=f"/{PROTOCOL_VERSION}", dependencies=[Depends(require_api_key)])


@router.get("/scorers", response_model=ScorerList, responses=problem_responses(401, 503))
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
    responses=problem_responses(400, 401, 413, 415, 422, 500, 502, 503, 504),
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
    require_json(request)
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
    except ScorerUpstreamError as exc:
        raise ProblemError(exc.status, str(exc), UPSTREAM_FAILED) from None
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
