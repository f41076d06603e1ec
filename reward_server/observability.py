"""Operations: Prometheus metrics, request ids and JSON logs for the reward server.

Metrics live in a registry per app (not prometheus-client's global one), so
several apps in one process (tests, embedders) keep separate counts. The
middleware is pure ASGI and sits outside the body-size guard, so every answer,
413s included, is counted, timed and tagged with a request id.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_PROBLEM_PREFIX = "urn:ddpo:problem:"
# A client's id is kept only if it cannot forge log lines or blow up label/line sizes.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

#: The id of the request being handled, for log records made while handling it.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ddpo_request_id", default=None
)

access_log = logging.getLogger("reward_server.access")

# Seconds: scoring a device batch ranges from a JPEG encode (ms) to CLIP on a big batch.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The reward server's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ddpo_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ddpo_http_request_duration_seconds",
            "Time from request start to the end of the response body.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "ddpo_http_requests_in_progress", "Requests being handled now.", registry=r
        )
        self.errors = Counter(
            "ddpo_errors",
            "Error answers by problem type (the part after urn:ddpo:problem:).",
            ["kind"],
            registry=r,
        )
        self.batch_size = Histogram(
            "ddpo_scorer_batch_size",
            "Items per device batch handed to a scorer (after dynamic batching).",
            ["scorer"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "ddpo_scorer_batch_duration_seconds",
            "Time a scorer spent on one batch.",
            ["scorer", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "ddpo_scorer_queue_depth",
            "Items submitted to a scorer and not yet scored (waiting or in the running batch).",
            ["scorer"],
            registry=r,
        )
        self.items = Counter(
            "ddpo_scored_items", "Items scored successfully.", ["scorer"], registry=r
        )

    def observe_batch(self, scorer: str, size: int, seconds: float, ok: bool) -> None:
        """Called by the batcher's worker thread after each scorer call."""
        self.batch_size.labels(scorer).observe(size)
        self.batch_duration.labels(scorer, "ok" if ok else "error").observe(seconds)
        if ok:
            self.items.labels(scorer).inc(size)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _route_label(scope: Scope, templates: list[tuple[re.Pattern[str], str]]) -> str:
    """The matched route's template (`/v1/score`), never the raw path: bounded cardinality."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Answered before routing (the body limit's 413): name the route it was meant for.
    raw = scope.get("path", "")
    for pattern, template in templates:
        if pattern.fullmatch(raw):
            return template
    return "unmatched"


def _route_templates(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """Regexes for the app's documented path templates (`/v1/jobs/{id}` -> `/v1/jobs/[^/]+`)."""
    try:
        paths = app.openapi().get("paths", {})
    except Exception:
        return []
    out = []
    for template in paths:
        parts = re.split(r"(\{[^}]+\})", template)
        regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        out.append((re.compile(regex), template))
    return out


def incoming_request_id(headers: Mapping[bytes, bytes]) -> str:
    """The client's X-Request-ID when it is safe to log, else a fresh one."""
    raw = headers.get(REQUEST_ID_HEADER.lower().encode("latin-1"))
    if raw is not None:
        value = raw.decode("latin-1").strip()
        if _SAFE_REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


class ObservabilityMiddleware:
    """Request id (honoured or generated, echoed), access log line, request metrics."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(dict(scope["headers"]))
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        problem_type: str | None = None
        problem_body = bytearray()
        header = (REQUEST_ID_HEADER.encode("latin-1"), request_id.encode("latin-1"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status, problem_type
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append(header)
                message = {**message, "headers": headers}
                content_type = dict(headers).get(b"content-type", b"")
                if content_type.startswith(b"application/problem+json"):
                    problem_type = "about:blank"
            elif (
                message["type"] == "http.response.body"
                and problem_type is not None
                and len(problem_body) < 65536
            ):
                # Problem documents are small; read their `type` to count errors by kind.
                problem_body.extend(message.get("body", b""))
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status, problem_type = 500, _PROBLEM_PREFIX + "internal"
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.in_progress.dec()
            self._record(scope, status, elapsed, problem_type, bytes(problem_body), request_id)
            request_id_var.reset(token)

    def _record(
        self,
        scope: Scope,
        status: int,
        elapsed: float,
        problem_type: str | None,
        body: bytes,
        request_id: str,
    ) -> None:
        method = scope.get("method", "")
        if self._templates is None and scope.get("app") is not None:
            self._templates = _route_templates(scope["app"])
        route = _route_label(scope, self._templates or [])
        m = self.metrics
        m.requests.labels(method, route, str(status)).inc()
        m.latency.labels(method, route).observe(elapsed)
        kind = None
        if status >= 400:
            kind = _error_kind(status, problem_type, body)
            m.errors.labels(kind).inc()
        access_log.info(
            "%s %s %d %.1fms",
            method,
            scope.get("path", ""),
            status,
            elapsed * 1000,
            extra={
                "request_id": request_id,
                "method": method,
                "path": scope.get("path", ""),
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                **({"error": kind} if kind else {}),
            },
        )


def _error_kind(status: int, problem_type: str | None, body: bytes) -> str:
    if problem_type and problem_type != "about:blank":
        kind = problem_type
    else:
        try:
            kind = str(json.loads(body).get("type", "about:blank"))
        except (ValueError, AttributeError):
            kind = "about:blank"
    if kind.startswith(_PROBLEM_PREFIX):
        return kind[len(_PROBLEM_PREFIX) :]
    # Framework errors (404, 405) carry no type of their own: name them by status.
    return f"http-{status}"


# -- logging ------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra=`.
# uvicorn's `color_message` repeats the message with ANSI colour codes.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers (Loki, CloudWatch, ELK) parse without rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _RequestIdFilter(logging.Filter):
    """Puts the current request id on text-format records too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get() or "-"
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (as logging's last-resort handler does)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def configure_logging(level: str, fmt: str) -> None:
    """Route every logger (uvicorn's included) through one root handler in `fmt` (json/text).

    Only a handler this function installed before is replaced, so calling it
    twice (or under pytest, whose capture handlers sit on the root) is harmless.
    """
    handler = _StderrHandler()
    handler._ddpo = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(_RequestIdFilter())
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_ddpo", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn is started with log_config=None: its loggers propagate here. Its access log
    # is off; ObservabilityMiddleware writes one with the request id instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "ObservabilityMiddleware",
    "ServerMetrics",
    "configure_logging",
    "incoming_request_id",
    "request_id_var",
]
