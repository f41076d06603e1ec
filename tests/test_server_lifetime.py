"""The reward-server child never outlives the process that started it, however that ends.

Each case runs a small parent script that starts a RewardServerProcess, then
ends the parent as a terminal, `timeout`/`docker stop`, a hang-up, the OOM
killer or a bug would, and checks that the child's pid is gone and its port free.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
READY_LINE = re.compile(r"reward server ready at http://127\.0\.0\.1:(\d+) \(pid (\d+)\)")
BOUND_S = 20.0  # liveness bound, not a timing assertion: the child drains in about a second

PARENT = """
import signal, sys, threading, time, httpx
from ddpo.server_process import RewardServerProcess

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started as a background job
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a shell job's default, even under nohup
mode = sys.argv[1]
server = RewardServerProcess(["jpeg_compressibility"])
if mode == "with":
    child = None
    try:
        with server:
            child = server.proc
            print("ready", child.pid, server.port, flush=True)
            time.sleep(600)
    finally:  # None unless stop() waited for the child's exit
        print("child returncode", child and child.returncode, flush=True)
elif mode == "thread":  # started from a thread that then ends: no PR_SET_PDEATHSIG may be armed
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
    time.sleep(1.0)
    assert httpx.get(server.url + "/readyz").status_code == 200, "child died with its thread"
    print("ready", server.proc.pid, server.port, flush=True)
    time.sleep(600)
elif mode == "crash":  # an unhandled exception with nobody left to call stop()
    server.start()
    print("ready", server.proc.pid, server.port, flush=True)
    raise RuntimeError("boom")
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "held"
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(condition, timeout_s: float = BOUND_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


class Reaper:
    """Kills whatever a failed test left running, so a red run does not leak servers."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.servers: list[tuple[int, int]] = []  # (pid, port)

    def close(self) -> None:
        for pid, port in self.servers:
            try:  # only if that pid is still our server, not a recycled one
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"reward_server" in cmdline and str(port).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    yield r
    r.close()


def spawn_in_own_session(args: list[str], reaper: Reaper) -> subprocess.Popen:
    """A process in a session of its own (like a shell job), output as text; reaped at the end."""
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    reaper.procs.append(proc)
    assert proc.stdout is not None
    return proc


def start_parent(mode: str, reaper: Reaper) -> tuple[subprocess.Popen, int, int]:
    """The parent in a session of its own (like a shell job), its child's pid and port."""
    proc = spawn_in_own_session([sys.executable, "-c", PARENT, mode], reaper)
    seen = ""
    for line in proc.stdout:
        seen += line
        if line.startswith("ready "):
            _, pid, port = line.split()
            reaper.servers.append((int(pid), int(port)))
            return proc, int(pid), int(port)
    proc.wait(timeout=30)
    pytest.fail(f"parent exited with {proc.returncode} before its server was ready:\n{seen}")


def assert_child_gone(proc: subprocess.Popen, child: int, port: int) -> str:
    """The parent's remaining output, once it has exited and its server is gone."""
    out, _ = proc.communicate(timeout=BOUND_S)  # drain the pipe, reap the parent
    assert wait_until(lambda: not alive(child)), f"reward server {child} outlived its parent"
    assert wait_until(lambda: port_free(port)), f"port {port} still held"
    return out


def assert_parent_stopped_it(out: str) -> None:
    """The parent's own cleanup (stop()) ran and saw the child exit, not only the child's watch."""
    match = re.search(r"child returncode (\S+)", out)
    assert match and match.group(1) != "None", out


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_termination_signal_stops_child_through_parent_cleanup(sig: str, reaper: Reaper) -> None:
    """SIGTERM/SIGHUP unwind the parent like Ctrl-C: `with` stops the child, exit 128 + signal."""
    signum = getattr(signal, sig)
    proc, child, port = start_parent("with", reaper)
    proc.send_signal(signum)
    assert_parent_stopped_it(assert_child_gone(proc, child, port))
    assert proc.returncode == 128 + signum, proc.returncode


def test_ctrl_c_reaches_the_parent_only_and_it_stops_the_child(reaper: Reaper) -> None:
    proc, child, port = start_parent("with", reaper)
    assert os.getsid(child) == child != os.getsid(proc.pid), "child shares the parent's session"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    assert_parent_stopped_it(assert_child_gone(proc, child, port))
    assert proc.returncode == -signal.SIGINT, proc.returncode


@pytest.mark.parametrize("mode", ["with", "thread"])
def test_sigkilled_parent_child_stops_itself(mode: str, reaper: Reaper) -> None:
    """No cleanup can run in the parent: the child notices it is orphaned ("thread": by polling)."""
    proc, child, port = start_parent(mode, reaper)
    proc.kill()
    assert_child_gone(proc, child, port)


def test_crashed_parent_that_never_stopped_its_child(reaper: Reaper) -> None:
    proc, child, port = start_parent("crash", reaper)
    assert_child_gone(proc, child, port)
    assert proc.returncode == 1


@pytest.mark.slow
def test_demo_cli_on_sigterm_exits_and_stops_its_server(tmp_path: Path, reaper: Reaper) -> None:
    """`timeout`, `docker stop`, systemd and CI runners stop `ddpo demo` with SIGTERM."""
    args = [sys.executable, "-m", "ddpo.cli", "demo", "--output", str(tmp_path / "demo")]
    proc = spawn_in_own_session(args, reaper)
    seen = ""
    match = None
    for line in proc.stdout:
        seen += line
        match = match or READY_LINE.search(line)
        if match and ("sampling" in line or "fine-tuning" in line):
            break
    assert match, seen
    port, child = int(match.group(1)), int(match.group(2))
    reaper.servers.append((child, port))
    proc.send_signal(signal.SIGTERM)
    assert_child_gone(proc, child, port)
    assert proc.returncode == 128 + signal.SIGTERM, proc.returncode


def test_start_then_with_is_one_child_and_stopped() -> None:
    """A second start() would leave the first child running; `with` after start() adopts it."""
    from ddpo.server_process import RewardServerProcess

    server = RewardServerProcess(["jpeg_compressibility"]).start()
    child = server.proc
    assert child is not None
    try:
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
        with server as same:
            assert same.proc is child
    finally:
        server.stop()
    assert child.returncode is not None
