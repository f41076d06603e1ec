"""/rate: the rating page for people, signed in by invite link (rater token in a cookie).

One image (or pair) at a time, answered by button or key; form posts redirect
to the next task, so reloading never submits twice.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from reward_server.auth import RATER_COOKIE, admin_key_given, authenticate_rater
from reward_server.pages import page, ratings_disabled_page
from reward_server.problems import NOT_FOUND, ProblemError
from reward_server.runtime import Runtime, ServerRuntime

if TYPE_CHECKING:
    from reward_server.storage import RatingStore

router = APIRouter()

_STATIC = {"rate.css": "text/css", "rate.js": "text/javascript"}
#: Messages the rating page may show after a redirect, by code (never echoed user text).
_NOTICES = {
    "expired": "That task had expired or was already rated; here is the next one.",
    "gone": "That job has ended; its ratings are no longer needed.",
    "skipped": "Skipped.",
    "invalid": "That answer was not valid; please try again.",
}


@router.get("/rate/login", include_in_schema=False)
async def rate_login(request: Request, runtime: Runtime, token: str = "") -> Response:
    """The invite link: check the token, keep it in a cookie, continue to /rate."""
    store = runtime.rating_store
    if store is None:
        return ratings_disabled_page()
    rater = await run_in_threadpool(store.find_rater, token) if token else None
    if rater is None:
        return page(
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
    response = page("message.html", title="Signed out", message="You are signed out.")
    response.delete_cookie(RATER_COOKIE, path="/rate")
    return response


@router.get("/rate", response_class=HTMLResponse, include_in_schema=False)
async def rate_page(
    request: Request,
    runtime: Runtime,
    mode: Literal["score", "pair"] | None = None,
    notice: str | None = None,
) -> Response:
    """The next image (or pair) to rate, or a page that checks again soon."""
    found = await _page_rater(request, runtime)
    if isinstance(found, Response):
        return found
    store, (rater_id, rater_name) = found
    task = await run_in_threadpool(store.claim, rater_id, runtime.settings.rating_lease_s, mode)
    waiting = await run_in_threadpool(store.waiting)
    return page(
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
    runtime: Runtime,
    lease: Annotated[str, Form(max_length=64)],
    score: Annotated[int | None, Form()] = None,
    choice: Annotated[str | None, Form()] = None,
    action: Annotated[str | None, Form()] = None,
    mode: Literal["score", "pair"] | None = None,
) -> Response:
    """The form post behind the buttons (and keys): store, then show the next task."""
    found = await _page_rater(request, runtime)
    if isinstance(found, Response):
        return found
    store, (rater_id, _) = found
    params: dict[str, str] = {"mode": mode} if mode else {}
    if action == "skip":
        await run_in_threadpool(store.release, rater_id, lease)
        params["notice"] = "skipped"
    else:
        params.update(await _submit(runtime, store, rater_id, lease, score, choice))
    url = "/rate" + ("?" + urlencode(params) if params else "")
    return RedirectResponse(url, status_code=303)


@router.get("/rate/image/{item_id}", include_in_schema=False)
async def rate_image(request: Request, runtime: Runtime, item_id: int) -> Response:
    """An image the rater holds a lease on (admins may see any)."""
    store = runtime.require_rating_store()
    rater_id: int | None
    if admin_key_given(request, runtime):
        rater_id = None
    else:
        rater_id, _ = await authenticate_rater(request, runtime, store)
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


async def _page_rater(
    request: Request, runtime: ServerRuntime
) -> tuple[RatingStore, tuple[int, str]] | Response:
    """The store and signed-in rater, or the page to show instead (disabled, sign in)."""
    store = runtime.rating_store
    if store is None:
        return ratings_disabled_page()
    try:
        return store, await authenticate_rater(request, runtime, store)
    except ProblemError as exc:
        return page("message.html", exc.status, title="Please sign in", message=exc.detail)


async def _submit(
    runtime: ServerRuntime,
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
    runtime.rating_signal.notify()
    return {}
