"""RFC 9457 problem details: every error the server sends, and the handlers that make them.

Each kind of error has a stable `type` URI so clients can branch on it; the
`detail` says, for a person, what exactly was wrong (naming the field or item).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.protocol import Problem

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_PREFIX = "urn:ddpo:problem:"

INVALID_JSON = _PREFIX + "invalid-json"
INVALID_REQUEST = _PREFIX + "invalid-request"
UNSUPPORTED_MEDIA_TYPE = _PREFIX + "unsupported-media-type"
INVALID_IMAGE = _PREFIX + "invalid-image"
TOO_MANY_ITEMS = _PREFIX + "too-many-items"
TOO_MANY_PIXELS = _PREFIX + "too-many-pixels"
BODY_TOO_LARGE = _PREFIX + "body-too-large"
UNKNOWN_SCORER = _PREFIX + "unknown-scorer"
UNAUTHORIZED = _PREFIX + "unauthorized"
NOT_READY = _PREFIX + "not-ready"
SCORER_FAILED = _PREFIX + "scorer-failed"
UPSTREAM_FAILED = _PREFIX + "upstream-failed"
INTERNAL = _PREFIX + "internal"
FORBIDDEN = _PREFIX + "forbidden"
NOT_FOUND = _PREFIX + "not-found"
RATINGS_DISABLED = _PREFIX + "ratings-disabled"
RATING_REFUSED = _PREFIX + "rating-refused"


class ProblemError(Exception):
    """Raise anywhere in a request to answer with this problem."""

    def __init__(
        self,
        status: int,
        detail: str,
        type: str = "about:blank",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type
        self.headers = dict(headers or {})


def problem_response(
    status: int,
    detail: str,
    type: str = "about:blank",
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    problem = Problem(
        type=type, title=HTTPStatus(status).phrase, status=status, detail=detail, instance=instance
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` saying that these statuses answer with a Problem."""
    ref = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {"description": "Problem details", "content": {PROBLEM_MEDIA_TYPE: {"schema": ref}}}
        for status in statuses
    }


def format_loc(loc: Sequence[Any]) -> str:
    """('items', 0, 'image', 'data') -> 'items[0].image.data'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def describe_errors(errors: Sequence[Mapping[str, Any]], limit: int = 5) -> str:
    """One line per field, without echoing the (possibly huge) input values."""
    parts = [f"{format_loc(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:limit]]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more error(s)")
    return "; ".join(parts)


def install_problem_handlers(app: FastAPI) -> None:
    """Turn every exception into problem+json, so no client ever parses an HTML or text error."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status, exc.detail, exc.type, request.url.path, exc.headers or None
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
            detail = f"no route {request.method} {request.url.path}; see /docs"
        return problem_response(
            exc.status_code, detail, instance=request.url.path, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(
            422, describe_errors(exc.errors()), INVALID_REQUEST, request.url.path
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, f"internal server error ({type(exc).__name__})", INTERNAL, request.url.path
        )
