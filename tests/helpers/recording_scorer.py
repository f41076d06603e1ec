"""`RecordingScorer`: a fast, predictable scorer that records how it was batched."""

from __future__ import annotations

import threading
import time
from typing import Any

from PIL import Image

from reward_server.scorers.base import Scorer


class RecordingScorer(Scorer):
    """Scores the top-left pixel's red value / 255; records every batch it was handed."""

    name = "recording"
    version = "test"
    description = "Red value of the top-left pixel, for tests."

    def __init__(self, max_batch_size: int = 8, delay_s: float = 0.0) -> None:
        self.max_batch_size = max_batch_size
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        with self._lock:
            self.batch_sizes.append(len(images))
            self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        scores = [img.getpixel((0, 0))[0] / 255.0 for img in images]
        return scores, [{"prompt": p} for p in prompts]
