"""Dynamic batching: coalescing, splitting, one worker thread, errors, graceful shutdown."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest
from PIL import Image

from reward_server.batching import BatcherClosed, DynamicBatcher, ScorerFailed
from reward_server.scorers.base import Scorer
from tests.helpers.recording_scorer import RecordingScorer


def _imgs(*reds: int) -> list[Image.Image]:
    return [Image.new("RGB", (4, 4), (r, 0, 0)) for r in reds]


def test_concurrent_requests_are_coalesced() -> None:
    scorer = RecordingScorer(max_batch_size=8)

    async def main() -> list[tuple[list[float], Any]]:
        batcher = DynamicBatcher(scorer, max_wait_s=0.2)
        try:
            return await asyncio.gather(
                *(batcher.submit(_imgs(10 * i, 10 * i + 1), [f"p{i}", "q"]) for i in range(4))
            )
        finally:
            await batcher.aclose()

    results = asyncio.run(main())
    assert scorer.batch_sizes == [8]  # four requests of two, one device batch
    for i, (scores, details) in enumerate(results):
        assert scores == pytest.approx([10 * i / 255, (10 * i + 1) / 255])
        assert details == [{"prompt": f"p{i}"}, {"prompt": "q"}]


def test_large_request_is_split_in_order_on_one_thread() -> None:
    scorer = RecordingScorer(max_batch_size=8)

    async def main() -> tuple[list[float], list[float]]:
        batcher = DynamicBatcher(scorer, max_wait_s=0.05)
        try:
            big, small = await asyncio.gather(
                batcher.submit(_imgs(*range(20)), [""] * 20),
                batcher.submit(_imgs(200), [""]),
            )
            return big[0], small[0]
        finally:
            await batcher.aclose()

    big, small = asyncio.run(main())
    assert big == pytest.approx([i / 255 for i in range(20)])
    assert small == pytest.approx([200 / 255])
    assert sum(scorer.batch_sizes) == 21 and max(scorer.batch_sizes) <= 8
    assert len(scorer.threads) == 1 and threading.current_thread().name not in scorer.threads


def test_lone_request_waits_at_most_max_wait() -> None:
    scorer = RecordingScorer(max_batch_size=64)

    async def main() -> float:
        batcher = DynamicBatcher(scorer, max_wait_s=0.02)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit(_imgs(1), [""])
        elapsed = loop.time() - start
        await batcher.aclose()
        return elapsed

    assert asyncio.run(main()) < 1.0


class _Broken(Scorer):
    name = "broken"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0

    def score(self, images: list[Image.Image], prompts: list[str]) -> tuple[list[float], None]:
        self.calls += 1
        if self.mode == "raise" and self.calls == 1:
            raise RuntimeError("boom")
        if self.mode == "short":
            return [1.0] * (len(images) - 1), None
        if self.mode == "nan":
            return [math.nan] * len(images), None
        return [1.0] * len(images), None


@pytest.mark.parametrize(
    ("mode", "match"),
    [("raise", "boom"), ("short", "returned 1 scores for 2"), ("nan", "non-finite")],
)
def test_scorer_errors_reach_every_caller(mode: str, match: str) -> None:
    async def main() -> None:
        batcher = DynamicBatcher(_Broken(mode), max_wait_s=0.1)
        try:
            results = await asyncio.gather(
                batcher.submit(_imgs(1), [""]),
                batcher.submit(_imgs(2), [""]),
                return_exceptions=True,
            )
            assert all(isinstance(r, ScorerFailed) and match in str(r) for r in results)
            if mode == "raise":  # the worker survives a failed batch
                assert (await batcher.submit(_imgs(3), [""]))[0] == [1.0]
        finally:
            await batcher.aclose()

    asyncio.run(main())


def test_graceful_shutdown_finishes_in_flight_work() -> None:
    scorer = RecordingScorer(max_batch_size=2, delay_s=0.05)

    async def main() -> None:
        batcher = DynamicBatcher(scorer, max_wait_s=0.0)
        tasks = [asyncio.create_task(batcher.submit(_imgs(i), [""])) for i in range(6)]
        await asyncio.sleep(0.01)
        await batcher.aclose()
        assert all(t.done() for t in tasks)
        assert [t.result()[0][0] for t in tasks] == pytest.approx([i / 255 for i in range(6)])
        with pytest.raises(BatcherClosed):
            await batcher.submit(_imgs(1), [""])

    asyncio.run(main())


def test_cancelled_request_is_not_scored() -> None:
    scorer = RecordingScorer(max_batch_size=1, delay_s=0.3)

    async def main() -> None:
        batcher = DynamicBatcher(scorer, max_wait_s=0.0)
        first = asyncio.create_task(batcher.submit(_imgs(1), [""]))
        await asyncio.sleep(0.02)  # the worker is busy with `first`
        second = asyncio.create_task(batcher.submit(_imgs(2), [""]))
        await asyncio.sleep(0.01)
        second.cancel()
        await first
        await batcher.aclose()

    asyncio.run(main())
    assert scorer.batch_sizes == [1]


def test_mismatched_prompts_rejected() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(RecordingScorer())
        try:
            with pytest.raises(ValueError):
                await batcher.submit(_imgs(1, 2), [""])
        finally:
            await batcher.aclose()

    asyncio.run(main())
