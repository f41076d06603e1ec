"""Async HTTP client for reward servers, driven from synchronous training code.

The trainer samples on the GPU while earlier batches are PNG-encoded, sent and
scored: `RewardClient.submit` hands a batch to an event loop on a daemon
thread and returns a `RewardFuture` at once; the trainer blocks only in
`RewardFuture.result` / `gather_results`, right before the PPO update.

Missing-reward policy: by default, fail. If any endpoint cannot score any
item (after retries, or past the deadline) the whole batch raises
`RewardError`. Job endpoints (human ratings) may opt in per endpoint to drop
unrated items or to score them with a fallback scorer (`jobs.py`).
Replicas, failover and retries: `replicas.py`, `transport.py`; outages
waited out with the deadlines on hold: `outage.py`, `deadline_clock.py`.

Modules, each one concern:

- `client.py`: `RewardClient`, the synchronous API and the event-loop thread
- `futures.py`: `RewardFuture`, `RewardResult`, `gather_results`
- `scoring.py`: one batch as chunks x endpoints under its deadline
- `transport.py`: one request with retries, backoff and failover
- `replicas.py`: which replica gets the next request
- `outage.py`: down detection, readiness probes, the outage budget
- `deadline_clock.py`: the deadline clock that stands still during outages
- `jobs.py`: rating jobs, long-polling, the `missing` policies
- `scorer_kinds.py`: whether a scorer is sync or job
- `readiness.py`: the check before training starts (`RewardClient.check_ready`)
- `batch.py`, `parsing.py`, `endpoints.py`: request bodies, answers, names
- `errors.py`: `RewardError`, `RewardServerUnavailable`
"""

from trainer.reward_client.client import RewardClient
from trainer.reward_client.errors import RewardError, RewardServerUnavailable
from trainer.reward_client.futures import RewardFuture, RewardResult, gather_results

__all__ = [
    "RewardClient",
    "RewardError",
    "RewardFuture",
    "RewardResult",
    "RewardServerUnavailable",
    "gather_results",
]
