"""/v1/jobs (API key): queue images for a job scorer (human ratings), long-poll for scores."""

from __future__ import annotations

import base64
import binascii
import math
import time
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from reward_server.auth import require_api_key
from reward_server.problems import INVALID_REQUEST, NOT_FOUND, UNKNOWN_SCORER, ProblemError
from reward_server.runtime import Runtime, ServerRuntime
from reward_server.score_request import decode_items, parse_score_request, require_json
from reward_server.scorers.human import HumanScorer
from shared.protocol import JobAccepted, JobStatus, ScoreItem

if TYPE_CHECKING:
    from reward_server.storage import JobView, NewItem

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["jobs"])


@router.post("/jobs", status_code=202, response_model=JobAccepted)
async def create_job(
    request: Request,
    runtime: Runtime,
    deadline_s: Annotated[
        float | None,
        Query(gt=0, description="Job lifetime in seconds, capped by DDPO_JOB_DEADLINE_S."),
    ] = None,
) -> JSONResponse:
    """Queue a ScoreRequest for a job scorer (human ratings); poll GET /v1/jobs/{id}."""
    runtime.require_ready()
    require_json(request)
    settings = runtime.settings
    body = parse_score_request(await request.body(), settings.max_items)
    scorer = runtime.scorers.get(body.scorer)
    if scorer is None:
        raise ProblemError(
            422,
            f"scorer: unknown scorer {body.scorer!r}; available: {', '.join(runtime.scorers)}",
            UNKNOWN_SCORER,
        )
    if not isinstance(scorer, HumanScorer):  # the job scorers; the others answer at once
        raise ProblemError(
            422,
            f"scorer: {body.scorer!r} answers at once; use POST /v1/score for it",
            UNKNOWN_SCORER,
        )
    await run_in_threadpool(
        decode_items, body.items, settings.max_pixels, settings.max_request_pixels
    )
    items = _new_items(body.items)
    lifetime = min(deadline_s or settings.job_deadline_s, settings.job_deadline_s)
    job_id, deadline = await run_in_threadpool(scorer.create_job, body.scorer, items, lifetime)
    runtime.rating_signal.notify()
    accepted = JobAccepted(job_id=job_id, deadline=deadline, expires_in_s=deadline - time.time())
    return JSONResponse(
        accepted.model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"}
    )


@router.get("/jobs/{job_id}", response_model=JobStatus)
async def get_job(
    runtime: Runtime,
    job_id: str,
    wait: Annotated[
        float,
        Query(ge=0, description="Seconds to wait for the job to finish (long poll); capped."),
    ] = 0.0,
) -> JobStatus:
    """The job's scores so far; with wait=S, answers as soon as it is done (or S passed)."""
    store = runtime.require_rating_store()
    give_up = time.monotonic() + min(wait, runtime.settings.job_max_wait_s)
    while True:
        view = await run_in_threadpool(store.job_view, job_id)
        if view is None:
            raise ProblemError(404, f"no job {job_id!r}", NOT_FOUND)
        left = give_up - time.monotonic()
        if view.status != "pending" or left <= 0:
            return _job_status(view, runtime)
        # Wake on a local rating, at the job's deadline, or every 2 s for other processes.
        await runtime.rating_signal.wait(
            min(left, max(view.deadline - time.time(), 0.0) + 0.01, 2.0)
        )


@router.delete("/jobs/{job_id}", response_model=JobStatus)
async def cancel_job(runtime: Runtime, job_id: str) -> JobStatus:
    """Stop collecting ratings for a job (its client gave up); returns what it has."""
    store = runtime.require_rating_store()
    if not await run_in_threadpool(store.cancel_job, job_id):
        raise ProblemError(404, f"no job {job_id!r}", NOT_FOUND)
    view = await run_in_threadpool(store.job_view, job_id)
    runtime.rating_signal.notify()
    return _job_status(view, runtime)


def _new_items(items: list[ScoreItem]) -> list[NewItem]:
    """The queue's items: each image kept as the PNG bytes the client sent."""
    from reward_server.storage import NewItem

    out = []
    for i, item in enumerate(items):
        try:
            png = base64.b64decode(item.image.data, validate=True)
        except (binascii.Error, ValueError):
            raise ProblemError(422, f"items[{i}].image: invalid base64", INVALID_REQUEST) from None
        out.append(NewItem(item.id, item.prompt, png, item.metadata))
    return out


def _job_status(view: JobView, runtime: ServerRuntime) -> JobStatus:
    scorer = runtime.scorers.get(view.scorer)
    return JobStatus(
        job_id=view.job_id,
        scorer=view.scorer,
        version=scorer.version if scorer is not None else "unknown",
        status=view.status,
        scores=[None if s is None or not math.isfinite(s) else float(s) for s in view.scores],
        num_ratings=view.num_ratings,
        wins=view.wins,
        ratings_per_item=view.ratings_per_item,
        deadline=view.deadline,
    )
