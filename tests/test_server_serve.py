"""Launching the server: loopback-only without keys, fail-fast on bad names, and a real process."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from reward_server.serve import is_loopback, run_server, safe_bind_host
from reward_server.settings import ServerSettings
from shared.images import encode_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_key_refuses_public_bind(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert safe_bind_host(ServerSettings(host="0.0.0.0")) == "127.0.0.1"
    assert "unauthenticated" in caplog.text and "binding 127.0.0.1 instead" in caplog.text


def test_key_or_opt_out_allows_public_bind() -> None:
    assert safe_bind_host(ServerSettings(host="0.0.0.0", api_keys=["k"])) == "0.0.0.0"
    opt_out = ServerSettings(host="0.0.0.0", allow_unauthenticated_public=True)
    assert safe_bind_host(opt_out) == "0.0.0.0"
    assert safe_bind_host(ServerSettings(host="::1")) == "::1"


def test_run_server_binds_loopback_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.delenv("DDPO_API_KEYS", raising=False)
    run_server("0.0.0.0", 8123, ["jpeg_compressibility"], [])
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    run_server("0.0.0.0", 8123, ["jpeg_compressibility"], ["k"])
    assert seen["host"] == "0.0.0.0"
    assert seen["app"].state.runtime.settings.check_api_key("k")


def test_run_server_fails_fast_on_unknown_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not serve"))
    with pytest.raises(SystemExit, match="unknown scorer.*'nope'"):
        run_server("127.0.0.1", 8123, ["nope"], [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_m_reward_server_serves_and_stops() -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "reward_server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--scorers", "jpeg_compressibility,jpeg_incompressibility", "--api-key", "k1"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        import numpy as np

        image = encode_png(np.zeros((16, 16, 3), dtype=np.uint8)).model_dump()
        body = {"scorer": "jpeg_incompressibility", "items": [{"id": "a", "image": image}]}
        assert httpx.post(f"{base}/v1/score", json=body).status_code == 401
        r = httpx.post(f"{base}/v1/score", json=body, headers={"Authorization": "Bearer k1"})
        assert r.status_code == 200 and r.json()["scores"][0] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, out
    assert "Application shutdown complete" in out
