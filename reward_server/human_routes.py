"""Routes of the human rating queue: the jobs API, the rating page and the admin page.

- `/v1/jobs` (API key): queue images for a job scorer, long-poll for scores.
- `/rate` (rater token, from an invite link, kept in a cookie): one image (or
  pair) at a time, answered by button or key; `/rate/api/*` is the same for
  scripts. API keys cannot rate, and rater tokens cannot use /v1 (403 both).
- `/admin` (API key, by header or a cookie set by its sign-in form): queue
  depth, ratings per rater, agreement between raters.

HTML is rendered on the server with autoescaping Jinja2 and served with a
strict Content-Security-Policy; the page's only script and stylesheet come
from this server, so it works offline and a prompt can never inject markup.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import time
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from reward_server.problems import INVALID_REQUEST, UNAUTHORIZED, UNKNOWN_SCORER, ProblemError
from shared.protocol import JobAccepted, JobStatus

if TYPE_CHECKING:
    from reward_server.app import ServerRuntime
    from reward_server.storage import RatingStore, TaskView

RATER_COOKIE = "ddpo_rater"
ADMIN_COOKIE = "ddpo_admin"
FORBIDDEN = "urn:ddpo:problem:forbidden"
NOT_FOUND = "urn:ddpo:problem:not-found"
NOT_ENABLED = "urn:ddpo:problem:ratings-disabled"
RATING_REFUSED = "urn:ddpo:problem:rating-refused"
_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC = {"rate.css": "text/css", "rate.js": "text/javascript"}
#: Messages the rating page may show after a redirect, by code (never echoed user text).
_NOTICES = {
    "expired": "That task had expired or was already rated; here is the next one.",
    "gone": "That job has ended; its ratings are no longer needed.",
    "skipped": "Skipped.",
    "invalid": "That answer was not valid; please try again.",
}


def _runtime(request: Request) -> ServerRuntime:
    return request.app.state.runtime


def _job_scorers(runtime: ServerRuntime) -> dict[str, Any]:
    return {n: s for n, s in runtime.scorers.items() if s.kind == "job"}


def _store(runtime: ServerRuntime) -> RatingStore | None:
    for scorer in _job_scorers(runtime).values():
        store = getattr(scorer, "store", None)
        if store is not None:
            return store
    return None


def _require_store(runtime: ServerRuntime) -> RatingStore:
    store = _store(runtime)
    if store is None:
        raise ProblemError(
            404,
            "human ratings are not enabled on this server: start it with the `human` "
            "(or `human_pairwise`) scorer",
            NOT_ENABLED,
        )
    return store


def _signal(request: Request) -> _ChangeSignal:
    state = request.app.state
    signal = getattr(state, "rating_signal", None)
    if signal is None:
        signal = state.rating_signal = _ChangeSignal()
    return signal


class _ChangeSignal:
    """Wakes long polls when a rating lands in this process (others are polled)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(timeout, 0.0))


async def forbid_rater_token(runtime: ServerRuntime, token: str) -> None:
    """403 for a rater token used on the API, so the rater learns why (not a bare 401)."""
    store = _store(runtime)
    if store is not None and await run_in_threadpool(store.find_rater, token) is not None:
        raise ProblemError(
            403, "rater tokens can only rate (/rate); the API needs an API key", FORBIDDEN
        )


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


# -- templates ---------------------------------------------------------------------


@lru_cache(maxsize=1)
def _templates() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("reward_server", "templates"),
        autoescape=True,  # every {{ value }} is HTML-escaped: prompts are untrusted text
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=_PAGE_HEADERS)


def _fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC" if ts else "-"


# -- auth for raters and admins ----------------------------------------------------


async def _rater(request: Request, runtime: ServerRuntime, store: RatingStore) -> tuple[int, str]:
    """The signed-in rater (cookie or bearer token). API keys get 403: they cannot rate."""
    token = _bearer(request) or request.cookies.get(RATER_COOKIE)
    if not token:
        raise ProblemError(
            401, "sign in with your invite link (ask for one: `ddpo raters add`)", UNAUTHORIZED
        )
    rater = await run_in_threadpool(store.find_rater, token)
    if rater is not None:
        return rater
    if runtime.settings.check_api_key(token):
        raise ProblemError(403, "API keys cannot rate; use a rater invite link", FORBIDDEN)
    raise ProblemError(
        401, "unknown or revoked rater token; ask for a new invite link", UNAUTHORIZED
    )


async def _admin_ok(request: Request, runtime: ServerRuntime, store: RatingStore | None) -> bool:
    """Admin access: an API key by header or cookie; open when the server has no keys."""
    key = _bearer(request) or request.cookies.get(ADMIN_COOKIE)
    settings = runtime.settings
    if key and settings.check_api_key(key):
        return True
    if key and store is not None and await run_in_threadpool(store.find_rater, key):
        raise ProblemError(403, "rater tokens cannot open the admin page", FORBIDDEN)
    return not settings.auth_required


# -- the JSON models of the rater API (not part of the trainer protocol) ----------


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


def _job_status(view: Any, runtime: ServerRuntime) -> JobStatus:
    scorer = runtime.scorers.get(view.scorer)
    return JobStatus(
        job_id=view.job_id,
        scorer=view.scorer,
        version=scorer.version if scorer is not None else "unknown",
        status=view.status,
        scores=[None if s is None or not math.isfinite(s) else float(s) for s in view.scores],
        num_ratings=view.num_ratings,
        ratings_per_item=view.ratings_per_item,
        deadline=view.deadline,
    )


def human_router() -> APIRouter:
    from reward_server.app import decode_items, parse_score_request, require_api_key

    router = APIRouter()
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["jobs"])

    # -- jobs ------------------------------------------------------------------------

    @v1.post("/jobs", status_code=202, response_model=JobAccepted)
    async def create_job(
        request: Request,
        deadline_s: Annotated[
            float | None,
            Query(gt=0, description="Job lifetime in seconds, capped by DDPO_JOB_DEADLINE_S."),
        ] = None,
    ) -> JSONResponse:
        """Queue a ScoreRequest for a job scorer (human ratings); poll GET /v1/jobs/{id}."""
        runtime = _runtime(request)
        runtime.require_ready()
        media = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if media.lower() != "application/json" and not media.lower().endswith("+json"):
            raise ProblemError(
                415,
                f"Content-Type {media!r} is not supported; send application/json",
                "urn:ddpo:problem:unsupported-media-type",
            )
        settings = runtime.settings
        body = parse_score_request(await request.body(), settings.max_items)
        scorer = runtime.scorers.get(body.scorer)
        if scorer is None:
            raise ProblemError(
                422,
                f"scorer: unknown scorer {body.scorer!r}; available: {', '.join(runtime.scorers)}",
                UNKNOWN_SCORER,
            )
        if scorer.kind != "job":
            raise ProblemError(
                422,
                f"scorer: {body.scorer!r} answers at once; use POST /v1/score for it",
                UNKNOWN_SCORER,
            )
        await run_in_threadpool(
            decode_items, body.items, settings.max_pixels, settings.max_request_pixels
        )
        from reward_server.storage import NewItem

        items = []
        for i, item in enumerate(body.items):
            try:
                png = base64.b64decode(item.image.data, validate=True)
            except (binascii.Error, ValueError):
                raise ProblemError(
                    422, f"items[{i}].image: invalid base64", INVALID_REQUEST
                ) from None
            items.append(NewItem(item.id, item.prompt, png, item.metadata))
        lifetime = min(deadline_s or settings.job_deadline_s, settings.job_deadline_s)
        job_id, deadline = await run_in_threadpool(
            scorer.store.create_job,
            body.scorer,
            scorer.mode,
            scorer.ratings_per_item,
            items,
            lifetime,
        )
        _signal(request).notify()
        accepted = JobAccepted(
            job_id=job_id, deadline=deadline, expires_in_s=deadline - time.time()
        )
        return JSONResponse(
            accepted.model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"}
        )

    @v1.get("/jobs/{job_id}", response_model=JobStatus)
    async def get_job(
        request: Request,
        job_id: str,
        wait: Annotated[
            float,
            Query(ge=0, description="Seconds to wait for the job to finish (long poll); capped."),
        ] = 0.0,
    ) -> JobStatus:
        """The job's scores so far; with wait=S, answers as soon as it is done (or S passed)."""
        runtime = _runtime(request)
        store = _require_store(runtime)
        give_up = time.monotonic() + min(wait, runtime.settings.job_max_wait_s)
        signal = _signal(request)
        while True:
            view = await run_in_threadpool(store.job_view, job_id)
            if view is None:
                raise ProblemError(404, f"no job {job_id!r}", NOT_FOUND)
            left = give_up - time.monotonic()
            if view.status != "pending" or left <= 0:
                return _job_status(view, runtime)
            # Wake on a local rating, at the job's deadline, or every 2 s for other processes.
            await signal.wait(min(left, max(view.deadline - time.time(), 0.0) + 0.01, 2.0))

    @v1.delete("/jobs/{job_id}", response_model=JobStatus)
    async def cancel_job(request: Request, job_id: str) -> JobStatus:
        """Stop collecting ratings for a job (its client gave up); returns what it has."""
        runtime = _runtime(request)
        store = _require_store(runtime)
        if not await run_in_threadpool(store.cancel_job, job_id):
            raise ProblemError(404, f"no job {job_id!r}", NOT_FOUND)
        view = await run_in_threadpool(store.job_view, job_id)
        _signal(request).notify()
        return _job_status(view, runtime)

    router.include_router(v1)

    # -- rating page -----------------------------------------------------------------

    @router.get("/rate/login", include_in_schema=False)
    async def rate_login(request: Request, token: str = "") -> Response:
        """The invite link: check the token, keep it in a cookie, continue to /rate."""
        runtime = _runtime(request)
        store = _store(runtime)
        if store is None:
            return _page("message.html", 404, title="Ratings disabled", message=_disabled())
        rater = await run_in_threadpool(store.find_rater, token) if token else None
        if rater is None:
            return _page(
                "message.html",
                401,
                title="Invite link not valid",
                message="This invite link is unknown or was revoked. Ask for a new one.",
            )
        response = RedirectResponse("/rate", status_code=303)
        response.set_cookie(
            RATER_COOKIE,
            token,
            max_age=30 * 24 * 3600,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/rate",
        )
        return response

    @router.post("/rate/logout", include_in_schema=False)
    async def rate_logout() -> Response:
        response = _page("message.html", title="Signed out", message="You are signed out.")
        response.delete_cookie(RATER_COOKIE, path="/rate")
        return response

    async def _page_rater(request: Request) -> tuple[RatingStore, tuple[int, str]] | Response:
        runtime = _runtime(request)
        store = _store(runtime)
        if store is None:
            return _page("message.html", 404, title="Ratings disabled", message=_disabled())
        try:
            return store, await _rater(request, runtime, store)
        except ProblemError as exc:
            return _page("message.html", exc.status, title="Please sign in", message=exc.detail)

    @router.get("/rate", response_class=HTMLResponse, include_in_schema=False)
    async def rate_page(
        request: Request,
        mode: Literal["score", "pair"] | None = None,
        notice: str | None = None,
    ) -> Response:
        """The next image (or pair) to rate, or a page that checks again soon."""
        found = await _page_rater(request)
        if isinstance(found, Response):
            return found
        store, (rater_id, rater_name) = found
        runtime = _runtime(request)
        task = await run_in_threadpool(store.claim, rater_id, runtime.settings.rating_lease_s, mode)
        waiting = await run_in_threadpool(store.waiting)
        return _page(
            "rate.html",
            rater=rater_name,
            task=task,
            waiting=waiting,
            mode=mode,
            query=("?" + urlencode({"mode": mode})) if mode else "",
            notice=_NOTICES.get(notice or ""),
            lease_minutes=max(1, round(runtime.settings.rating_lease_s / 60)),
        )

    @router.post("/rate", include_in_schema=False)
    async def rate_submit(
        request: Request,
        lease: Annotated[str, Form(max_length=64)],
        score: Annotated[int | None, Form()] = None,
        choice: Annotated[str | None, Form()] = None,
        action: Annotated[str | None, Form()] = None,
        mode: Literal["score", "pair"] | None = None,
    ) -> Response:
        """The form post behind the buttons (and keys): store, then show the next task."""
        found = await _page_rater(request)
        if isinstance(found, Response):
            return found
        store, (rater_id, _) = found
        params: dict[str, str] = {"mode": mode} if mode else {}
        if action == "skip":
            await run_in_threadpool(store.release, rater_id, lease)
            params["notice"] = "skipped"
        else:
            params.update(await _submit(request, store, rater_id, lease, score, choice))
        url = "/rate" + ("?" + urlencode(params) if params else "")
        return RedirectResponse(url, status_code=303)

    @router.get("/rate/image/{item_id}", include_in_schema=False)
    async def rate_image(request: Request, item_id: int) -> Response:
        """An image the rater holds a lease on (admins may see any)."""
        runtime = _runtime(request)
        store = _require_store(runtime)
        rater_id: int | None
        if await _admin_key_given(request, runtime):
            rater_id = None
        else:
            rater_id, _ = await _rater(request, runtime, store)
        png = await run_in_threadpool(store.image_for, rater_id, item_id)
        if png is None:
            raise ProblemError(404, "no such image, or it is not yours to rate now", NOT_FOUND)
        return Response(
            png,
            media_type="image/png",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=600"},
        )

    @router.get("/rate/static/{name}", include_in_schema=False)
    async def rate_static(name: str) -> Response:
        media = _STATIC.get(name)
        if media is None:
            raise ProblemError(404, f"no static file {name!r}", NOT_FOUND)
        body = resources.files("reward_server").joinpath("templates", "static", name).read_bytes()
        return Response(body, media_type=media, headers={"Cache-Control": "max-age=300"})

    # -- rater API for scripts -------------------------------------------------------

    @router.get("/rate/api/next", response_model=NextTask, tags=["rating"])
    async def api_next(request: Request, mode: Literal["score", "pair"] | None = None) -> NextTask:
        """Lease the next task to the calling rater (the one it holds, if any)."""
        runtime = _runtime(request)
        store = _require_store(runtime)
        rater_id, _ = await _rater(request, runtime, store)
        task = await run_in_threadpool(store.claim, rater_id, runtime.settings.rating_lease_s, mode)
        waiting = await run_in_threadpool(store.waiting)
        return NextTask(task=_task_out(task) if task else None, waiting=waiting)

    @router.post("/rate/api/rate", response_model=RatingOut, tags=["rating"])
    async def api_rate(request: Request, body: RatingIn) -> RatingOut:
        """Answer a task; 200 means the rating is committed to the database."""
        runtime = _runtime(request)
        store = _require_store(runtime)
        rater_id, _ = await _rater(request, runtime, store)
        from reward_server.storage import QueueError

        try:
            rating_id = await run_in_threadpool(
                store.submit, rater_id, body.lease, body.score, body.choice
            )
        except QueueError as exc:
            raise ProblemError(exc.status, str(exc), RATING_REFUSED) from None
        _signal(request).notify()
        return RatingOut(rating_id=rating_id)

    @router.post("/rate/api/skip", tags=["rating"])
    async def api_skip(request: Request, body: RatingIn) -> dict[str, bool]:
        """Give a task back unanswered."""
        runtime = _runtime(request)
        store = _require_store(runtime)
        rater_id, _ = await _rater(request, runtime, store)
        return {"released": await run_in_threadpool(store.release, rater_id, body.lease)}

    # -- admin -----------------------------------------------------------------------

    @router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    async def admin_page(request: Request) -> Response:
        runtime = _runtime(request)
        store = _store(runtime)
        if not await _admin_ok(request, runtime, store):
            return _page("admin_login.html", 401)
        if store is None:
            return _page("message.html", 404, title="Ratings disabled", message=_disabled())
        stats = await run_in_threadpool(store.stats)
        return _page(
            "admin.html",
            stats=stats,
            fmt_time=_fmt_time,
            scorers=sorted(_job_scorers(runtime)),
            settings=runtime.settings,
        )

    @router.post("/admin/login", include_in_schema=False)
    async def admin_login(request: Request, key: Annotated[str, Form(max_length=512)]) -> Response:
        runtime = _runtime(request)
        if not runtime.settings.check_api_key(key):
            return _page("admin_login.html", 401, error="That API key is not valid.")
        response = RedirectResponse("/admin", status_code=303)
        response.set_cookie(
            ADMIN_COOKIE,
            key,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/admin",
        )
        return response

    @router.get("/admin/stats.json", tags=["rating"])
    async def admin_stats(request: Request) -> dict[str, Any]:
        """The admin page's figures as JSON."""
        runtime = _runtime(request)
        store = _require_store(runtime)
        if not await _admin_ok(request, runtime, store):
            raise ProblemError(
                401,
                "send an API key: `Authorization: Bearer <key>`",
                UNAUTHORIZED,
            )
        return await run_in_threadpool(store.stats)

    return router


async def _admin_key_given(request: Request, runtime: ServerRuntime) -> bool:
    key = _bearer(request) or request.cookies.get(ADMIN_COOKIE)
    return bool(key) and runtime.settings.check_api_key(key)  # type: ignore[arg-type]


async def _submit(
    request: Request,
    store: RatingStore,
    rater_id: int,
    lease: str,
    score: int | None,
    choice: str | None,
) -> dict[str, str]:
    """Store a form answer; returns the notice to show with the next page, if any."""
    from reward_server.storage import QueueError

    if choice is not None:
        choice = choice.lower()
    try:
        await run_in_threadpool(store.submit, rater_id, lease, score, choice)
    except QueueError as exc:
        if exc.status == 410:
            return {"notice": "gone"}
        if exc.status == 422:
            return {"notice": "invalid"}
        return {"notice": "expired"}
    _signal(request).notify()
    return {}


def _disabled() -> str:
    return "Human rating is not enabled on this server (it needs the `human` scorer)."
