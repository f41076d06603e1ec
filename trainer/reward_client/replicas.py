"""Which replica of an endpoint gets the next request.

An endpoint's `url` may list several replicas. Each request goes to the
replica with the fewest requests in flight (ties round-robin); a replica that
failed is avoided for `cooldown_s` unless all are.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class Replicas:
    """Load and health of every replica base URL; touched only on the event-loop thread."""

    def __init__(self, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self._avoid_until: dict[str, float] = {}  # base url -> time.monotonic() value
        self._in_flight: defaultdict[str, int] = defaultdict(int)  # base url -> requests
        self._turn: defaultdict[tuple[str, ...], int] = defaultdict(int)  # round-robin

    def cooling(self, base: str, now: float | None = None) -> bool:
        """Whether `base` failed within the last `cooldown_s`."""
        return self._avoid_until.get(base, 0.0) > (time.monotonic() if now is None else now)

    def avoid(self, base: str, now: float) -> None:
        """Keep requests away from `base` for `cooldown_s` from `now`."""
        self._avoid_until[base] = now + self.cooldown_s

    def healthy(self, base: str) -> None:
        """`base` answered (or said it is ready): no need to avoid it any longer."""
        self._avoid_until.pop(base, None)

    def pick(self, bases: list[str], tried: set[str]) -> str:
        """Fewest in flight among healthy replicas not yet tried, ties round-robin."""
        now = time.monotonic()
        fresh = [b for b in bases if b not in tried] or bases
        healthy = [b for b in fresh if not self.cooling(b, now)]
        if not healthy:  # all cooling down: the one that failed longest ago
            return min(fresh, key=lambda b: self._avoid_until.get(b, 0.0))
        key = tuple(bases)
        turn = self._turn[key] % len(healthy)
        self._turn[key] += 1
        rotated = healthy[turn:] + healthy[:turn]
        return min(rotated, key=lambda b: self._in_flight[b])

    @contextlib.contextmanager
    def in_flight(self, base: str) -> Iterator[None]:
        """Count one request to `base` while it is outstanding."""
        self._in_flight[base] += 1
        try:
            yield
        finally:
            self._in_flight[base] -= 1
