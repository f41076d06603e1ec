"""Run the reward server under uvicorn, refusing to expose an unauthenticated API."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from reward_server.settings import ServerSettings

log = logging.getLogger("reward_server")

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def safe_bind_host(settings: ServerSettings) -> str:
    """The host to bind: the requested one, unless that would expose an API without keys."""
    if settings.auth_required:
        return settings.host
    log.warning("no API key configured (--api-key or DDPO_API_KEYS): the API is unauthenticated")
    if is_loopback(settings.host):
        return settings.host
    if settings.allow_unauthenticated_public:
        log.warning(
            "binding %s without an API key because DDPO_ALLOW_UNAUTHENTICATED_PUBLIC is set",
            settings.host,
        )
        return settings.host
    log.warning(
        "refusing to bind the non-loopback host %s without an API key; binding %s instead",
        settings.host,
        LOOPBACK,
    )
    return LOOPBACK


def uvicorn_options(settings: ServerSettings, log_level: str) -> dict[str, Any]:
    """How uvicorn runs the app: our log handlers, our access log, a bounded graceful drain.

    On SIGTERM uvicorn stops accepting connections and waits for in-flight
    requests (at most shutdown_timeout_s); then the app's lifespan closes each
    batcher, which scores everything already submitted before its worker exits.
    """
    return {
        "log_level": log_level.lower(),
        "log_config": None,  # keep configure_logging's handlers (JSON or text)
        "access_log": False,  # ObservabilityMiddleware logs each request with its id
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
    }


def run_server(
    host: str,
    port: int,
    scorers: list[str] | None,
    api_keys: list[str],
    log_level: str = "info",
) -> None:
    """Load the scorers, then serve until interrupted. Other settings come from DDPO_* env.

    scorers=None loads every scorer whose weights are at hand (or DDPO_SCORERS);
    api_keys=[] falls back to DDPO_API_KEYS. Raises SystemExit with a readable
    message when a named scorer cannot be loaded.
    """
    import uvicorn

    from reward_server.app import create_app
    from reward_server.observability import configure_logging
    from reward_server.scorers.registry import ScorersUnavailable, UnknownScorer, build_scorers

    overrides: dict[str, object] = {"host": host, "port": port}
    if scorers is not None:
        overrides["scorers"] = scorers
    if api_keys:
        overrides["api_keys"] = api_keys
    settings = ServerSettings(**overrides)
    configure_logging(log_level, settings.log_format)
    bind = safe_bind_host(settings)
    try:
        loaded = build_scorers(settings, settings.scorers)
    except (ScorersUnavailable, UnknownScorer) as exc:
        raise SystemExit(f"error: {exc}") from None
    if not loaded:
        raise SystemExit("error: no scorer could be loaded; see the log for each reason")
    app = create_app(settings, loaded)
    uvicorn.run(app, host=bind, port=settings.port, **uvicorn_options(settings, log_level))
