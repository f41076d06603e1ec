"""Cap request bodies: refuse by Content-Length up front, and stop a streamed body mid-way.

A pure ASGI middleware, so the cap holds for chunked uploads and for any route,
before a byte of an oversized body is buffered by the application.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_server.problems import BODY_TOO_LARGE, ProblemError, problem_response


class BodyTooLarge(ProblemError):
    def __init__(self, limit: int, size: int | None = None) -> None:
        if size is None:
            detail = f"request body exceeds the limit of {limit} bytes"
        else:
            detail = f"request body is {size} bytes, more than the limit of {limit} bytes"
        super().__init__(413, detail, BODY_TOO_LARGE)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await problem_response(400, "Content-Length is not an integer")(
                    scope, receive, send
                )
                return
            if size > self.max_bytes:
                await self._refuse(BodyTooLarge(self.max_bytes, size), scope, receive, send)
                return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await self._refuse(exc, scope, receive, send)

    @staticmethod
    async def _refuse(exc: BodyTooLarge, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            exc.status, exc.detail, exc.type, scope.get("path"), {"Connection": "close"}
        )
        await response(scope, receive, send)
