"""The start-of-training check: every endpoint has a ready replica serving its scorers.

Run once before epoch 1 (and minutes of model loading), so a server that is
down, not ready or misconfigured fails the run at once, naming itself. A
replica with problems is only warned about, and avoided for a while, if
another replica of the same endpoint is fine.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from pydantic import ValidationError

from shared.protocol import ScorerList
from trainer.config import RewardEndpoint
from trainer.reward_client.endpoints import auth_headers, base_url
from trainer.reward_client.parsing import problem_detail
from trainer.reward_client.replicas import Replicas
from trainer.reward_client.scorer_kinds import ScorerKinds

logger = logging.getLogger(__package__)  # the package's logger, "trainer.reward_client"


async def find_problems(
    http: httpx.AsyncClient,
    endpoints: list[RewardEndpoint],
    replicas: Replicas,
    kinds: ScorerKinds,
    timeout_s: float,
) -> list[str]:
    """Problems that leave some endpoint with no usable replica; warn about the others."""
    by_url: dict[str, list[int]] = {}
    for i, ep in enumerate(endpoints):
        for u in ep.urls:
            by_url.setdefault(base_url(u), []).append(i)
    urls = list(by_url)
    results = await asyncio.gather(
        *(
            _check_url(http, kinds, url, [endpoints[i] for i in by_url[url]], timeout_s)
            for url in urls
        )
    )
    found: dict[tuple[int, str], list[str]] = {}  # (endpoint, url) -> problems
    for url, per_ep in zip(urls, results, strict=True):
        for i, problems in zip(by_url[url], per_ep, strict=True):
            found[(i, url)] = problems
    now = time.monotonic()
    errors: list[str] = []
    warned: set[str] = set()
    for i, ep in enumerate(endpoints):
        bases = [base_url(u) for u in ep.urls]
        bad = [p for b in bases for p in found[(i, b)]]
        if any(not found[(i, b)] for b in bases):
            for b in bases:
                if found[(i, b)]:
                    replicas.avoid(b, now)
            for p in bad:
                if p not in warned:
                    warned.add(p)
                    logger.warning("%s (another replica is ready)", p)
        else:
            errors.extend(p for p in bad if p not in errors)
    return errors


async def _check_url(
    http: httpx.AsyncClient,
    kinds: ScorerKinds,
    url: str,
    eps: list[RewardEndpoint],
    timeout_s: float,
) -> list[list[str]]:
    """Problems with each of `eps` on this one server."""
    server_problems = await _check_server(http, kinds, url, eps, timeout_s)
    if isinstance(server_problems, str):
        return [[server_problems] for _ in eps]
    return server_problems


async def _check_server(
    http: httpx.AsyncClient,
    kinds: ScorerKinds,
    url: str,
    eps: list[RewardEndpoint],
    timeout_s: float,
) -> str | list[list[str]]:
    """One problem that makes the whole server unusable, or the problems per endpoint."""
    api_key = next((ep.api_key for ep in eps if ep.api_key), None)
    headers = auth_headers(api_key)
    timeout = httpx.Timeout(timeout_s)
    try:
        ready = await http.get(f"{url}/readyz", headers=headers, timeout=timeout)
        if ready.status_code != 200:
            return (
                f"reward server {url} is not ready: HTTP {ready.status_code}: "
                f"{problem_detail(ready)}"
            )
        listing = await http.get(f"{url}/v1/scorers", headers=headers, timeout=timeout)
    except httpx.ConnectError as exc:
        return f"reward server {url} is unreachable (connection refused?): {exc}"
    except httpx.TransportError as exc:
        return f"reward server {url} did not answer: {type(exc).__name__}: {exc}"
    if listing.status_code != 200:
        return (
            f"reward server {url}: GET /v1/scorers gave HTTP {listing.status_code}: "
            f"{problem_detail(listing)}"
        )
    try:
        served = {s.name: s.kind for s in ScorerList.model_validate_json(listing.content).scorers}
    except ValidationError as exc:
        return f"reward server {url}: GET /v1/scorers is not a scorer list: {exc}"
    kinds.remember(url, served)
    names = ", ".join(served) or "(none)"
    per_ep: list[list[str]] = []
    for ep in eps:
        problems: list[str] = []
        per_ep.append(problems)
        if ep.scorer not in served:
            problems.append(
                f"reward server {url} does not serve scorer {ep.scorer!r}; available: {names}"
            )
        elif ep.mode != "auto" and ep.mode != served[ep.scorer]:
            problems.append(
                f"reward server {url}: scorer {ep.scorer!r} is a {served[ep.scorer]} scorer, "
                f"but the endpoint says mode = {ep.mode!r}"
            )
        if ep.missing == "fallback" and served.get(ep.fallback_scorer or "") != "sync":
            problems.append(
                f"reward server {url}: fallback scorer {ep.fallback_scorer!r} is not a "
                f"sync scorer it serves; available: {names}"
            )
    return per_ep
