"""How an endpoint is named in logs, errors and result keys, and addressed on the wire."""

from __future__ import annotations

from collections.abc import Sequence

from trainer.config import RewardEndpoint


def base_url(url: str) -> str:
    """A replica URL without its trailing slash, so paths can be appended."""
    return url.rstrip("/")


def url_text(ep: RewardEndpoint) -> str:
    """The endpoint's URL as configured; replicas joined by commas."""
    return ep.url if isinstance(ep.url, str) else ",".join(ep.url)


def describe(ep: RewardEndpoint, url: str | None = None) -> str:
    """The endpoint (or one replica `url` of it) as error and log messages name it."""
    where = url or ",".join(base_url(u) for u in ep.urls)
    return f"reward endpoint {where} (scorer {ep.scorer!r})"


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def scorer_keys(endpoints: Sequence[RewardEndpoint]) -> list[str]:
    """Scorer name, qualified by URL only where a name repeats, so log keys stay short."""
    names = [ep.scorer for ep in endpoints]
    keys: list[str] = []
    for i, ep in enumerate(endpoints):
        key = ep.scorer if names.count(ep.scorer) == 1 else f"{ep.scorer}@{url_text(ep)}"
        if key in keys:
            key = f"{key}#{i}"
        keys.append(key)
    return keys
