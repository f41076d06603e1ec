"""`RatingSignal`: wakes the job long polls of this process when the rating queue changes."""

from __future__ import annotations

import asyncio
import contextlib


class RatingSignal:
    """Wakes long polls when a rating lands in this process (other processes are polled)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(timeout, 0.0))
