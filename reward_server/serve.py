"""Run the reward server under uvicorn, refusing to expose an unauthenticated API."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
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


def parent_alive_check(parent_pid: int) -> Callable[[], bool]:
    """How to tell that the process which started this one still runs.

    For our own parent, a changed getppid() is exact: the kernel re-parents us
    (to pid 1 or a subreaper) the moment it exits, zombie or not, and a reused
    pid cannot fool it. A pid that is not our parent (a launcher in between)
    can only be probed with signal 0.
    """
    if os.getppid() == parent_pid:
        return lambda: os.getppid() == parent_pid

    def alive() -> bool:
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        return True

    return alive


def _set_parent_death_signal(sig: int) -> None:
    """Linux: have the kernel send `sig` when the thread that spawned us ends (no-op elsewhere).

    Only right when that thread is the parent's main thread (it ends with the
    process); the poller in watch_parent is what works everywhere.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        log.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)


def watch_parent(
    parent_pid: int,
    grace_s: float,
    poll_s: float = 0.25,
    death_signal: bool = False,
) -> threading.Thread:
    """Shut this server down once its parent is gone, so it never outlives it as an orphan.

    The parent's gone-ness is handled like `docker stop`: SIGTERM to ourselves,
    which uvicorn turns into its graceful shutdown (or which ends the process
    outright while scorers are still loading). If that has not finished within
    grace_s, the process exits hard. Polling is what covers a SIGKILLed parent;
    death_signal adds PR_SET_PDEATHSIG on Linux for an immediate signal.
    """
    if death_signal:
        _set_parent_death_signal(signal.SIGTERM)
    alive = parent_alive_check(parent_pid)

    def run() -> None:
        while alive():
            time.sleep(poll_s)
        log.warning("parent process %d is gone; shutting down", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        log.error("graceful shutdown took over %.0f s after the parent left; exiting", grace_s)
        os._exit(1)

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread


def run_server(
    host: str,
    port: int,
    scorers: list[str] | None,
    api_keys: list[str],
    log_level: str = "info",
    parent_pid: int | None = None,
    parent_death_signal: bool = False,
) -> None:
    """Load the scorers, then serve until interrupted. Other settings come from DDPO_* env.

    scorers=None loads every scorer whose weights are at hand (or DDPO_SCORERS);
    api_keys=[] falls back to DDPO_API_KEYS. Raises SystemExit with a readable
    message when a named scorer cannot be loaded. With parent_pid, the server
    also shuts down when that process is gone (see watch_parent).
    """
    import uvicorn

    from reward_server.app import create_app
    from reward_server.observability import configure_logging
    from reward_server.rating_store import RatingStoreOpener
    from reward_server.scorers.registry import ScorersUnavailable, UnknownScorer, build_scorers

    overrides: dict[str, object] = {"host": host, "port": port}
    if scorers is not None:
        overrides["scorers"] = scorers
    if api_keys:
        overrides["api_keys"] = api_keys
    settings = ServerSettings(**overrides)
    configure_logging(log_level, settings.log_format)
    if parent_pid is not None:  # before loading scorers: that can take a while
        # grace: the drain (shutdown_timeout_s for requests, then the batchers), with room
        grace_s = 2 * settings.shutdown_timeout_s + 30
        watch_parent(parent_pid, grace_s, death_signal=parent_death_signal)
    bind = safe_bind_host(settings)
    opener = RatingStoreOpener(settings)  # what it opens is handed to the app, which closes it
    try:
        loaded = build_scorers(settings, settings.scorers, open_rating_store=opener)
    except (ScorersUnavailable, UnknownScorer) as exc:
        opener.close()
        raise SystemExit(f"error: {exc}") from None
    if not loaded:
        opener.close()
        raise SystemExit("error: no scorer could be loaded; see the log for each reason")
    app = create_app(settings, loaded, rating_store=opener.store)
    uvicorn.run(app, host=bind, port=settings.port, **uvicorn_options(settings, log_level))
