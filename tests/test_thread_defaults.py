"""OpenMP defaults: `ddpo` spins briefly unless told otherwise; a co-located server gets one thread.

`ddpo` once put OMP_WAIT_POLICY=PASSIVE into every command's environment, which
made an epoch on 2 cores 2.2x slower (docs/benchmarks.md, 2026-12-01); without
it libgomp's long spin collapsed beside another busy program (issue 27). These
checks need no timing: they look at the environment each process gets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ddpo.cli as cli
from ddpo.server_process import RewardServerProcess
from ddpo.thread_defaults import SPIN_DEFAULTS

OMP_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")


def _clean_environ(monkeypatch, **omp: str) -> None:
    """A private os.environ without OMP_* (plus `omp`), so nothing set here leaks out."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    monkeypatch.setattr(os, "environ", {**env, **omp})


def test_cli_main_sets_passive_waiting(monkeypatch):
    """Nothing exported: `ddpo` threads sleep when they wait (never libgomp's long spin)."""
    _clean_environ(monkeypatch)
    seen: dict[str, str | None] = {}
    monkeypatch.setattr(cli, "app", lambda: seen.update({n: os.environ.get(n) for n in OMP_VARS}))
    cli.main()
    assert seen == {**dict.fromkeys(OMP_VARS), **SPIN_DEFAULTS}
    assert SPIN_DEFAULTS == {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize(
    "chosen", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}, {}]
)
def test_cli_main_keeps_the_users_openmp_variables(monkeypatch, chosen):
    _clean_environ(monkeypatch, OMP_NUM_THREADS="2", **chosen)
    seen: dict[str, str | None] = {}
    monkeypatch.setattr(cli, "app", lambda: seen.update({n: os.environ.get(n) for n in OMP_VARS}))
    cli.main()
    assert seen["OMP_NUM_THREADS"] == "2"
    expected = chosen or SPIN_DEFAULTS  # a wait behaviour the user chose is left alone
    assert {k: seen[k] for k in expected} == expected
    if chosen:
        assert {k: v for k, v in seen.items() if v is not None} == {
            "OMP_NUM_THREADS": "2",
            **chosen,
        }


def test_cli_does_not_load_torch_before_main():
    """libgomp reads GOMP_SPINCOUNT once, when torch loads it: that must come after main()."""
    code = "import sys, ddpo.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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
