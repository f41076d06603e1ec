"""OpenMP defaults: training starts at libgomp's defaults; a server waits passively.

`ddpo` once put OMP_WAIT_POLICY=PASSIVE into every command's environment, which
made an epoch on 2 cores 2.1x slower than libgomp's spin on free cores; the spin
collapsed beside another busy program (issue 27). Training now adapts its thread
count at run time (tests/test_thread_guard.py). These checks need no timing: they
look at the environment each process gets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ddpo.cli as cli
from ddpo.server_process import RewardServerProcess
from ddpo.thread_defaults import COMMAND_DEFAULTS, command_of

OMP_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")


def _clean_environ(monkeypatch, **omp: str) -> None:
    """A private os.environ without OMP_* (plus `omp`), so nothing set here leaks out."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    monkeypatch.setattr(os, "environ", {**env, **omp})


def _run_main(monkeypatch, *argv: str) -> dict[str, str | None]:
    """The OMP_* variables the typer app would see for `ddpo ARGV`."""
    seen: dict[str, str | None] = {}
    monkeypatch.setattr(sys, "argv", ["ddpo", *argv])
    monkeypatch.setattr(cli, "app", lambda: seen.update({n: os.environ.get(n) for n in OMP_VARS}))
    cli.main()
    return seen


@pytest.mark.parametrize("argv", [("train", "--config", "x.toml"), ("demo",), ("--help",)])
def test_training_commands_start_at_libgomps_defaults(monkeypatch, argv):
    """Nothing exported: nothing added, so free cores spin at full speed (the guard adapts)."""
    _clean_environ(monkeypatch)
    assert _run_main(monkeypatch, *argv) == dict.fromkeys(OMP_VARS)


def test_serve_keeps_all_cores_and_waits_passively(monkeypatch):
    _clean_environ(monkeypatch)
    seen = _run_main(monkeypatch, "serve", "--port", "8000")
    assert seen == {**dict.fromkeys(OMP_VARS), "OMP_WAIT_POLICY": "PASSIVE"}
    assert COMMAND_DEFAULTS == {"serve": {"OMP_WAIT_POLICY": "PASSIVE"}}
    assert seen["OMP_NUM_THREADS"] is None


def test_command_of_skips_options():
    assert command_of(["ddpo", "--help", "train", "--config", "a"]) == "train"
    assert command_of(["ddpo"]) is None


@pytest.mark.parametrize(
    "chosen",
    [
        {"OMP_WAIT_POLICY": "ACTIVE"},
        {"GOMP_SPINCOUNT": "300000"},
        {"OMP_NUM_THREADS": "2"},
        {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"},
    ],
)
@pytest.mark.parametrize("command", ["train", "serve"])
def test_cli_main_keeps_the_users_openmp_variables(monkeypatch, chosen, command):
    """Any OpenMP choice of the user's wins, and nothing is added beside it."""
    _clean_environ(monkeypatch, **chosen)
    seen = _run_main(monkeypatch, command)
    assert {k: v for k, v in seen.items() if v is not None} == chosen


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
