"""Job endpoints (human ratings): submit, long-poll, and the policy for unrated items.

A job endpoint POSTs the items to /v1/jobs and long-polls GET /v1/jobs/{id}
on the replica that accepted it, stopping `margin_s` before the batch
deadline so that partial results and the fallback still fit. Items still
unrated then follow the endpoint's `missing` policy: "fail" (the default:
training on a partial reward would bias the update), "drop" (NaN, for the
trainer to leave out), or "fallback" (scored by another sync scorer on the
same server). Polls ride out a restart under the same job id; a server that
forgot the job (404) gets the items again once, as a new job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging

import httpx
import numpy as np
from pydantic import ValidationError

from shared.protocol import JobAccepted, JobStatus
from trainer.config import RewardEndpoint
from trainer.reward_client.batch import Batch, encode_indices, score_body
from trainer.reward_client.deadline_clock import DeadlineClock
from trainer.reward_client.endpoints import auth_headers, describe
from trainer.reward_client.errors import RewardError
from trainer.reward_client.parsing import problem_detail
from trainer.reward_client.transport import Sender

logger = logging.getLogger(__package__)  # the package's logger, "trainer.reward_client"


class JobRunner:
    """Runs one chunk of a batch as a rating job; event-loop thread only."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        sender: Sender,
        clock: DeadlineClock,
        executor: concurrent.futures.Executor,
        poll_s: float,
        margin_s: float,
    ) -> None:
        self._http = http
        self._sender = sender
        self._clock = clock
        self._executor = executor  # PNG encoding for the fallback scorer
        self.poll_s = poll_s
        self.margin_s = margin_s

    async def run(
        self,
        ep: RewardEndpoint,
        batch: Batch,
        body: bytes,
        start: int,
        label: str,
        pending: dict[str, str],
    ) -> np.ndarray:
        """Submit a job, long-poll it until done or just before the deadline, apply `missing`.

        Polls ride out a restart of the accepting replica under the same job id;
        if the server no longer knows the job (404), the items go again once.
        """
        stop_at = batch.deadline - self.margin_s  # a DeadlineClock value
        job_id, base = await self._submit(ep, body, stop_at, label, pending)
        resubmitted = False
        while True:
            wait = max(0.0, min(self.poll_s, stop_at - self._clock()))
            pending[label] = f"job {job_id}: waiting for ratings"
            resp, _ = await self._sender.request(
                ep,
                "GET",
                f"/v1/jobs/{job_id}?wait={wait:.3f}",
                label,
                pending,
                extra_timeout_s=wait,
                pin=base,
                accept=(404,),
            )
            if resp.status_code == 404:
                if resubmitted:
                    raise RewardError(
                        f"{describe(ep, base)} lost job {job_id} too (HTTP 404: "
                        f"{problem_detail(resp)}), the second job for these items"
                    )
                logger.warning(
                    "%s no longer knows job %s (HTTP 404: %s; restarted without a persistent "
                    "rating database?); submitting its items again as a new job, once; "
                    "ratings given to the lost job are not used",
                    describe(ep, base),
                    job_id,
                    problem_detail(resp),
                )
                job_id, base = await self._submit(ep, body, stop_at, label, pending)
                resubmitted = True
                continue
            try:
                status = JobStatus.model_validate_json(resp.content)
            except ValidationError as exc:
                raise RewardError(f"{describe(ep)} sent an invalid job status: {exc}") from None
            if status.status != "pending" or self._clock() >= stop_at:
                break
        n = len(status.scores)
        scores = job_scores(ep, status)
        missing = [i for i in range(n) if status.scores[i] is None]
        batch.counts["rated"] += n - len(missing)
        if status.status == "pending":  # we stop waiting: free the raters from this job
            with contextlib.suppress(httpx.HTTPError):
                await self._http.delete(
                    f"{base}/v1/jobs/{job_id}",
                    headers=auth_headers(ep.api_key),
                    timeout=ep.timeout_s,
                )
        if not missing:
            return scores
        why = (
            f"{describe(ep)}: {len(missing)} of {n} items lack ratings "
            f"(job {job_id} {status.status}, {status.ratings_per_item} needed per item)"
        )
        return await self._apply_missing(ep, batch, start, missing, scores, why, label, pending)

    async def _apply_missing(
        self,
        ep: RewardEndpoint,
        batch: Batch,
        start: int,
        missing: list[int],
        scores: np.ndarray,
        why: str,
        label: str,
        pending: dict[str, str],
    ) -> np.ndarray:
        """The endpoint's `missing` policy for the unrated items at `missing` of this chunk."""
        if ep.missing == "fail":
            raise RewardError(why + "; set missing = 'drop' or 'fallback' to go on without them")
        if ep.missing == "drop":
            logger.warning("%s; dropping them", why)
            batch.counts["dropped"] += len(missing)
            return scores
        assert ep.fallback_scorer is not None
        logger.warning("%s; scoring them with %r", why, ep.fallback_scorer)
        loop = asyncio.get_running_loop()
        subset = await loop.run_in_executor(
            self._executor, encode_indices, batch, [start + i for i in missing]
        )
        fallback_ep = ep.model_copy(update={"scorer": ep.fallback_scorer, "mode": "sync"})
        filled = await self._sender.post_scores(
            fallback_ep, score_body(ep.fallback_scorer, subset), len(missing), label, pending
        )
        scores[missing] = filled
        batch.counts["filled"] += len(missing)
        return scores

    async def _submit(
        self, ep: RewardEndpoint, body: bytes, stop_at: float, label: str, pending: dict[str, str]
    ) -> tuple[str, str]:
        """POST the job; its id and the replica that accepted it (which its polls stay on)."""
        lifetime = max(1.0, stop_at - self._clock())
        resp, base = await self._sender.request(
            ep, "POST", f"/v1/jobs?deadline_s={lifetime:.3f}", label, pending, content=body
        )
        try:
            return JobAccepted.model_validate_json(resp.content).job_id, base
        except ValidationError as exc:
            raise RewardError(f"{describe(ep)} sent an invalid job answer: {exc}") from None


def job_scores(ep: RewardEndpoint, status: JobStatus) -> np.ndarray:
    """The job's per-item scores as `ep` takes them; NaN where an item lacks its ratings.

    pair_score = "win_rate": the share of its comparisons each item won, in place of
    the server's fitted strength (trainer/advantages.py turns it into the advantage).
    """
    if ep.pair_score == "strength":
        return np.array([np.nan if s is None else s for s in status.scores], dtype=np.float64)
    if status.wins is None:
        raise RewardError(
            f"{describe(ep)}: pair_score = 'win_rate' needs pairwise comparisons, and scorer "
            f"{status.scorer!r} reports none (use human_pairwise, or pair_score = 'strength')"
        )
    return np.array(
        [
            np.nan if s is None or n == 0 else w / n
            for s, w, n in zip(status.scores, status.wins, status.num_ratings, strict=True)
        ],
        dtype=np.float64,
    )
