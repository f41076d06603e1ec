"""Run the reward server under uvicorn, refusing to expose an unauthenticated API."""

from __future__ import annotations

import ipaddress
import logging

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
    from reward_server.scorers.registry import ScorersUnavailable, UnknownScorer, build_scorers

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, object] = {"host": host, "port": port}
    if scorers is not None:
        overrides["scorers"] = scorers
    if api_keys:
        overrides["api_keys"] = api_keys
    settings = ServerSettings(**overrides)
    bind = safe_bind_host(settings)
    try:
        loaded = build_scorers(settings, settings.scorers)
    except (ScorersUnavailable, UnknownScorer) as exc:
        raise SystemExit(f"error: {exc}") from None
    if not loaded:
        raise SystemExit("error: no scorer could be loaded; see the log for each reason")
    app = create_app(settings, loaded)
    uvicorn.run(app, host=bind, port=settings.port, log_level=log_level.lower())
