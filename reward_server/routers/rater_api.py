"""/rate/api/*: the rating page's work for scripts (rater token as bearer), as JSON.

These models are the rater API's own, not part of the trainer protocol.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from reward_server.auth import authenticate_rater
from reward_server.problems import RATING_REFUSED, ProblemError
from reward_server.runtime import Runtime

if TYPE_CHECKING:
    from reward_server.storage import TaskView

router = APIRouter(tags=["rating"])


class TaskItemOut(BaseModel):
    item_id: int
    prompt: str
    image_url: str


class TaskOut(BaseModel):
    lease: str
    mode: Literal["score", "pair"]
    expires_in_s: float
    items: list[TaskItemOut]


class NextTask(BaseModel):
    task: TaskOut | None
    waiting: int


class RatingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease: str = Field(..., max_length=64)
    score: int | None = Field(None, ge=1, le=10)
    choice: Literal["a", "b"] | None = None


class RatingOut(BaseModel):
    rating_id: int


@router.get("/rate/api/next", response_model=NextTask)
async def api_next(
    request: Request, runtime: Runtime, mode: Literal["score", "pair"] | None = None
) -> NextTask:
    """Lease the next task to the calling rater (the one it holds, if any)."""
    store = runtime.require_rating_store()
    rater_id, _ = await authenticate_rater(request, runtime, store)
    task = await run_in_threadpool(store.claim, rater_id, runtime.settings.rating_lease_s, mode)
    waiting = await run_in_threadpool(store.waiting)
    return NextTask(task=_task_out(task) if task else None, waiting=waiting)


@router.post("/rate/api/rate", response_model=RatingOut)
async def api_rate(request: Request, runtime: Runtime, body: RatingIn) -> RatingOut:
    """Answer a task; 200 means the rating is committed to the database."""
    from reward_server.storage import QueueError

    store = runtime.require_rating_store()
    rater_id, _ = await authenticate_rater(request, runtime, store)
    try:
        rating_id = await run_in_threadpool(
            store.submit, rater_id, body.lease, body.score, body.choice
        )
    except QueueError as exc:
        raise ProblemError(exc.status, str(exc), RATING_REFUSED) from None
    runtime.rating_signal.notify()
    return RatingOut(rating_id=rating_id)


@router.post("/rate/api/skip")
async def api_skip(request: Request, runtime: Runtime, body: RatingIn) -> dict[str, bool]:
    """Give a task back unanswered."""
    store = runtime.require_rating_store()
    rater_id, _ = await authenticate_rater(request, runtime, store)
    return {"released": await run_in_threadpool(store.release, rater_id, body.lease)}


def _task_out(task: TaskView) -> TaskOut:
    return TaskOut(
        lease=task.lease_token,
        mode=task.mode,  # type: ignore[arg-type]
        expires_in_s=max(0.0, task.expires_at - time.time()),
        items=[
            TaskItemOut(item_id=it.item_id, prompt=it.prompt, image_url=f"/rate/image/{it.item_id}")
            for it in task.items
        ],
    )
