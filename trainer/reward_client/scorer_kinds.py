"""Whether an endpoint's scorer answers at once ("sync") or through rating jobs ("job").

An endpoint with `mode = "auto"` asks GET /v1/scorers once per server; the
readiness check fills the same cache, so training usually asks nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from pydantic import ValidationError

from shared.protocol import ScorerList
from trainer.config import RewardEndpoint
from trainer.reward_client.endpoints import auth_headers, base_url, describe
from trainer.reward_client.replicas import Replicas

logger = logging.getLogger(__package__)  # the package's logger, "trainer.reward_client"


class ScorerKinds:
    """A per-server cache of scorer name -> "sync" | "job"; event-loop thread only."""

    def __init__(self, http: httpx.AsyncClient, replicas: Replicas) -> None:
        self._http = http
        self._replicas = replicas
        self._kinds: dict[str, dict[str, str]] = {}  # base url -> scorer -> kind
        self._locks: dict[str, asyncio.Lock] = {}

    def remember(self, url: str, kinds: dict[str, str]) -> None:
        """What a server's scorer listing said, as read elsewhere (the readiness check)."""
        self._kinds[url] = kinds

    async def of(self, ep: RewardEndpoint) -> str:
        """ "sync" or "job": the endpoint's mode, or for "auto" what GET /v1/scorers says."""
        if ep.mode != "auto":
            return ep.mode
        now = time.monotonic()
        bases = sorted((base_url(u) for u in ep.urls), key=lambda b: self._replicas.cooling(b, now))
        for url in bases:  # replicas serve the same scorers: the first that answers says
            lock = self._locks.setdefault(url, asyncio.Lock())
            async with lock:
                if url not in self._kinds:
                    try:
                        resp = await self._http.get(
                            f"{url}/v1/scorers",
                            headers=auth_headers(ep.api_key),
                            timeout=ep.timeout_s,
                        )
                        listing = ScorerList.model_validate_json(resp.content)
                        self._kinds[url] = {s.name: s.kind for s in listing.scorers}
                    except (httpx.TransportError, ValidationError) as exc:
                        logger.warning("%s: cannot list scorers (%s)", url, exc)
                        continue
            return self._kinds[url].get(ep.scorer, "sync")
        # Sync is what every protocol server offers; the score call will say more.
        logger.warning("%s: cannot list scorers anywhere; assuming sync", describe(ep))
        return "sync"
