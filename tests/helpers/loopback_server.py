"""A uvicorn server in a thread on loopback, and a minimal v1 reward app to put in it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI

from ddpo.server_process import free_port
from shared.images import decode_image
from shared.protocol import ScoreRequest, ScoreResponse, ScorerInfo, ScorerList


def mean_scorer_app(on_score: Callable[[list[str]], None]) -> FastAPI:
    """The v1 protocol with one scorer, "mean" (mean pixel / 255); `on_score` gets each
    request's item ids."""
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ok", "scorers": ["mean"]}

    @app.get("/v1/scorers")
    async def scorers() -> dict:
        return ScorerList(scorers=[ScorerInfo(name="mean", version="1")]).model_dump()

    @app.post("/v1/score")
    async def score(req: ScoreRequest) -> dict:
        on_score([item.id for item in req.items])
        scores = [float(np.asarray(decode_image(it.image)).mean() / 255) for it in req.items]
        return ScoreResponse(scorer=req.scorer, version="1", scores=scores).model_dump()

    return app


class LoopbackServer:
    """Uvicorn in a thread on a fixed loopback port; stop() and start() again at will."""

    def __init__(self, app_factory: Callable[[], Any], port: int | None = None) -> None:
        self.app_factory = app_factory
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> LoopbackServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # same port right away
        sock.bind(("127.0.0.1", self.port))
        config = uvicorn.Config(
            self.app_factory(), log_level="warning", timeout_graceful_shutdown=0.2
        )
        self.server = uvicorn.Server(config)
        self.sock = sock
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        give_up = time.monotonic() + 60  # only keeps a broken run from hanging
        while not self.server.started:
            if time.monotonic() > give_up:
                raise AssertionError("loopback server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.should_exit = True
        assert self.thread is not None
        self.thread.join(timeout=10)
        self.sock.close()
        self.server = None
