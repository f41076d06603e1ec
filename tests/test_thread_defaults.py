"""OpenMP defaults: the trainer keeps the user's (fast) ones; a co-located server gets few threads.

`ddpo` once put OMP_WAIT_POLICY=PASSIVE into every command's environment, which
made an epoch on 2 cores 2.2x slower (docs/benchmarks.md, 2026-12-01) and went
unnoticed because the benchmarks and tests pin OMP_NUM_THREADS=1. These checks
need no timing: they look at the environment each process gets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ddpo.cli as cli
from ddpo.server_process import RewardServerProcess

OMP_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")


def _clean_environ(monkeypatch, **omp: str) -> None:
    """A private os.environ without OMP_* (plus `omp`), so nothing set here leaks out."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    monkeypatch.setattr(os, "environ", {**env, **omp})


def test_cli_main_sets_no_openmp_variables(monkeypatch):
    """What `ddpo train` runs with is what the user exported, nothing added."""
    _clean_environ(monkeypatch)
    seen: dict[str, str | None] = {}
    monkeypatch.setattr(cli, "app", lambda: seen.update({n: os.environ.get(n) for n in OMP_VARS}))
    cli.main()
    assert seen == dict.fromkeys(OMP_VARS)


def test_cli_main_keeps_the_users_openmp_variables(monkeypatch):
    _clean_environ(monkeypatch, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="2")
    seen: dict[str, str | None] = {}
    monkeypatch.setattr(cli, "app", lambda: seen.update({n: os.environ.get(n) for n in OMP_VARS}))
    cli.main()
    assert seen["OMP_WAIT_POLICY"] == "ACTIVE"
    assert seen["OMP_NUM_THREADS"] == "2"


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/environ")
def test_colocated_server_child_gets_one_passive_thread(monkeypatch, tmp_path):
    """The child shares the trainer's cores: one thread that never spins, whatever we run with."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # e.g. exported for the trainer
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    with RewardServerProcess(["jpeg_compressibility"], log_file=tmp_path / "server.log") as srv:
        assert srv.proc is not None
        env = _environ_of(srv.proc.pid)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


class _Spawned(Exception):
    pass


def test_extra_env_overrides_the_server_thread_defaults(monkeypatch):
    """A caller that knows better (a server on its own cores) can still give it more threads."""
    _clean_environ(monkeypatch)
    seen: dict[str, str] = {}

    def fake_popen(cmd, env=None, **kwargs):
        seen.update(env or {})
        raise _Spawned

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    server = RewardServerProcess(["jpeg_compressibility"], extra_env={"OMP_NUM_THREADS": "2"})
    with pytest.raises(_Spawned):
        server.start()
    assert seen["OMP_NUM_THREADS"] == "2"
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE"
