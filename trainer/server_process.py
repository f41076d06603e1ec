"""Run a reward server as a child process on a free loopback port (demo, tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RewardServerProcess:
    """`with RewardServerProcess(["jpeg_compressibility"]) as server: server.url`.

    The child is stopped on exit, also when the body raises or is interrupted.
    """

    def __init__(
        self,
        scorers: list[str] | None = None,
        port: int | None = None,
        api_key: str | None = None,
        log_file: Path | None = None,
        ready_timeout_s: float = 60.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.scorers = scorers
        self.port = port or free_port()
        self.api_key = api_key
        self.log_file = log_file
        self.ready_timeout_s = ready_timeout_s
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self._log_handle = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RewardServerProcess:
        cmd = [sys.executable, "-m", "reward_server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port)]
        if self.scorers:
            cmd += ["--scorers", ",".join(self.scorers)]
        env = {**os.environ, **self.extra_env}
        if self.api_key:
            env["DDPO_API_KEYS"] = self.api_key
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_file.open("ab")
        out = self._log_handle or subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                where = f" (log: {self.log_file})" if self.log_file else ""
                raise RuntimeError(
                    f"reward server exited with code {self.proc.returncode} at start{where}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"reward server at {self.url} not ready after {self.ready_timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> RewardServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
