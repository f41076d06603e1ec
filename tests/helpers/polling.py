"""Waiting on something another thread or process does, without fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(cond: Callable[[], object], what: str, limit_s: float = 60.0) -> None:
    """Poll until cond() is true; the limit only keeps a broken run from hanging."""
    give_up = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)
