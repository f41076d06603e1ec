"""Who may do what: API keys for /v1 and /admin, rater tokens for /rate.

The two kinds of credential never stand in for each other: a rater token on
the API, or an API key on the rating page, is answered 403 with the reason,
not a bare 401.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from reward_server.problems import FORBIDDEN, UNAUTHORIZED, ProblemError
from reward_server.runtime import Runtime, ServerRuntime

if TYPE_CHECKING:
    from reward_server.storage import RatingStore

RATER_COOKIE = "ddpo_rater"
ADMIN_COOKIE = "ddpo_admin"

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


async def forbid_rater_token(runtime: ServerRuntime, token: str) -> None:
    """403 for a rater token used on the API, so the rater learns why (not a bare 401)."""
    store = runtime.rating_store
    if store is not None and await run_in_threadpool(store.find_rater, token) is not None:
        raise ProblemError(
            403, "rater tokens can only rate (/rate); the API needs an API key", FORBIDDEN
        )


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def authenticate_rater(
    request: Request, runtime: ServerRuntime, store: RatingStore
) -> tuple[int, str]:
    """The signed-in rater (cookie or bearer token). API keys get 403: they cannot rate."""
    token = bearer_token(request) or request.cookies.get(RATER_COOKIE)
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


async def admin_allowed(
    request: Request, runtime: ServerRuntime, store: RatingStore | None
) -> bool:
    """Admin access: an API key by header or cookie; open when the server has no keys."""
    key = bearer_token(request) or request.cookies.get(ADMIN_COOKIE)
    settings = runtime.settings
    if key and settings.check_api_key(key):
        return True
    if key and store is not None and await run_in_threadpool(store.find_rater, key):
        raise ProblemError(403, "rater tokens cannot open the admin page", FORBIDDEN)
    return not settings.auth_required


def admin_key_given(request: Request, runtime: ServerRuntime) -> bool:
    """Whether the request carries a valid API key (header or admin cookie)."""
    key = bearer_token(request) or request.cookies.get(ADMIN_COOKIE)
    return bool(key) and runtime.settings.check_api_key(key)  # type: ignore[arg-type]
