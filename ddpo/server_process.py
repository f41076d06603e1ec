"""Run a reward server as a child process on a free loopback port (demo, tests).

The child never outlives its parent. It runs in its own session (a terminal's
Ctrl-C or hang-up reaches the parent only, which then stops it), the parent
turns SIGTERM/SIGHUP into an exception while the child runs so `with` and
`finally` stop it as on Ctrl-C, and the child watches its parent's pid and
shuts itself down when the parent is gone for any other reason (SIGKILL, a
crash outside `with`); see reward_server.serve.watch_parent.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType

import httpx

#: Signals that end a process with no cleanup unless handled (SIGHUP: not on Windows).
TERMINATING_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, exits with 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


_handler_users = 0
_replaced: list[int] = []


def exit_on_termination() -> Callable[[], None]:
    """Make SIGTERM/SIGHUP raise Terminated in the main thread, until the returned undo runs.

    Only signals still at their default are changed (that default kills the
    process with no `finally` run): an ignored SIGHUP (nohup) stays ignored and
    a handler the program installed stays in charge. Nested uses share one
    installation. Off the main thread Python cannot set handlers; then nothing
    changes and the child's parent watch alone keeps it from outliving us.
    """
    global _handler_users
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if _handler_users == 0:
        for sig in TERMINATING_SIGNALS:
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _raise_terminated)
                _replaced.append(sig)
    _handler_users += 1
    done = False

    def undo() -> None:
        global _handler_users
        nonlocal done
        if done or threading.current_thread() is not threading.main_thread():
            return
        done = True
        _handler_users -= 1
        if _handler_users == 0:
            for sig in _replaced:
                if signal.getsignal(sig) is _raise_terminated:
                    signal.signal(sig, signal.SIG_DFL)
            _replaced.clear()

    return undo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RewardServerProcess:
    """`with RewardServerProcess(["jpeg_compressibility"]) as server: server.url`.

    The child is stopped on exit, also when the body raises or is interrupted
    (Ctrl-C, SIGTERM, SIGHUP), and ends by itself if this process dies without
    stopping it.
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
        self._restore_signals: Callable[[], None] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RewardServerProcess:
        if self.running:  # a second child would leave the first unstopped
            raise RuntimeError(f"reward server already started (pid {self.proc.pid})")
        self.stop()  # one that exited by itself: close its log, restore the signals
        cmd = [sys.executable, "-m", "reward_server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--parent-pid", str(os.getpid())]
        if self.scorers:
            cmd += ["--scorers", ",".join(self.scorers)]
        # Linux's PR_SET_PDEATHSIG fires when the spawning *thread* ends: only from the main one.
        if threading.current_thread() is threading.main_thread():
            cmd.append("--parent-death-signal")
        # It shares the trainer's cores: one passive OpenMP thread never spins on them.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **self.extra_env}
        if self.api_key:
            env["DDPO_API_KEYS"] = self.api_key
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_file.open("ab")
        out = self._log_handle or subprocess.DEVNULL
        self._restore_signals = exit_on_termination()
        try:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            self._wait_ready()
        except BaseException:  # __exit__ does not run when __enter__ raises
            self.stop()
            raise
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
        """SIGTERM (graceful drain), then SIGKILL after timeout_s; to the child's process group."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
            finally:  # also when a second signal interrupts the wait
                if proc.poll() is None:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._restore_signals is not None:
            self._restore_signals()
            self._restore_signals = None

    def __enter__(self) -> RewardServerProcess:
        """Starts the child unless start() already did; either way `with` stops it."""
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the child's whole session (it leads its process group), or the child alone."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass
