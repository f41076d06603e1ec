"""The clock batch deadlines are measured on: it stands still while an endpoint is down.

An outage is bounded by its own budget (`outage_budget_s`), so time spent
waiting one out must not use up the batches' deadlines as well.
"""

from __future__ import annotations

import threading
import time


class DeadlineClock:
    """time.monotonic() less the time some endpoint was down; callable from any thread.

    Outages nest: the clock stands still from the first `hold` until every
    hold is released.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds = 0
        self._held_since = 0.0
        self._held_total = 0.0

    def __call__(self) -> float:
        with self._lock:
            now = time.monotonic()
            held = self._held_total + (now - self._held_since if self._holds else 0.0)
            return now - held

    def hold(self) -> None:
        """Start one outage's hold on every batch's deadline."""
        with self._lock:
            if self._holds == 0:
                self._held_since = time.monotonic()
            self._holds += 1

    def release(self) -> None:
        """End one outage's hold; the clock runs again once no hold is left."""
        with self._lock:
            self._holds -= 1
            if self._holds == 0:
                self._held_total += time.monotonic() - self._held_since
