"""`python -m reward_server --host H --port P --scorers a,b --api-key K [--parent-pid N]`."""

from __future__ import annotations

from typing import Annotated

import typer


def main(
    host: Annotated[str, typer.Option(envvar="DDPO_HOST", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="DDPO_PORT", help="TCP port.")] = 8000,
    scorers: Annotated[
        str | None,
        typer.Option(help="Comma-separated scorer names; default: all whose weights are here."),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="Accepted bearer key (repeatable); or DDPO_API_KEYS."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    parent_pid: Annotated[
        int | None,
        typer.Option(help="Shut down once this process (the one that started us) is gone."),
    ] = None,
    parent_death_signal: Annotated[
        bool,
        typer.Option(
            hidden=True,
            help="Linux: also PR_SET_PDEATHSIG; only if we were spawned from the main thread.",
        ),
    ] = False,
) -> None:
    """Serve the DDPO reward protocol over HTTP."""
    from reward_server.serve import run_server

    names = [s.strip() for s in scorers.split(",") if s.strip()] if scorers else None
    run_server(
        host,
        port,
        names,
        list(api_key or []),
        log_level,
        parent_pid=parent_pid,
        parent_death_signal=parent_death_signal,
    )


if __name__ == "__main__":
    typer.run(main)
