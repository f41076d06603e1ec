"""/admin: queue depth, ratings per rater, agreement (API key by header, or a sign-in cookie)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from reward_server.auth import ADMIN_COOKIE, admin_allowed
from reward_server.pages import fmt_time, page, ratings_disabled_page
from reward_server.problems import UNAUTHORIZED, ProblemError
from reward_server.runtime import Runtime

router = APIRouter()


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
async def admin_page(request: Request, runtime: Runtime) -> Response:
    store = runtime.rating_store
    if not await admin_allowed(request, runtime, store):
        return page("admin_login.html", 401)
    if store is None:
        return ratings_disabled_page()
    stats = await run_in_threadpool(store.stats)
    return page(
        "admin.html",
        stats=stats,
        fmt_time=fmt_time,
        scorers=sorted(runtime.job_scorers()),
        settings=runtime.settings,
    )


@router.post("/admin/login", include_in_schema=False)
async def admin_login(
    request: Request, runtime: Runtime, key: Annotated[str, Form(max_length=512)]
) -> Response:
    if not runtime.settings.check_api_key(key):
        return page("admin_login.html", 401, error="That API key is not valid.")
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
async def admin_stats(request: Request, runtime: Runtime) -> dict[str, Any]:
    """The admin page's figures as JSON."""
    store = runtime.require_rating_store()
    if not await admin_allowed(request, runtime, store):
        raise ProblemError(401, "send an API key: `Authorization: Bearer <key>`", UNAUTHORIZED)
    return await run_in_threadpool(store.stats)
