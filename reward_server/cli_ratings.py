"""`ddpo raters ...` and `ddpo ratings ...`: manage raters and export ratings.

These talk to the rating database directly (same settings as the server:
DATABASE_URL, or DDPO_DATA_DIR for SQLite), so they work whether or not the
server runs. The module imports neither fastapi nor SQLAlchemy up front: the
trainer's CLI registers these commands, and must stay light to start.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

raters_app = typer.Typer(help="Invite and manage the people who rate images.", no_args_is_help=True)
ratings_app = typer.Typer(help="Export the collected ratings.", no_args_is_help=True)

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL; default: DATABASE_URL, else SQLite in DDPO_DATA_DIR (./data).",
    ),
]


def _store(database_url: str | None) -> Any:
    from reward_server.settings import ServerSettings

    try:
        from reward_server.storage import RatingStore
    except ImportError as exc:
        typer.echo(f"error: the rating database needs the server extra ({exc})", err=True)
        raise typer.Exit(2) from None
    settings = ServerSettings(**({"database_url": database_url} if database_url else {}))
    return RatingStore(settings.resolved_database_url()), settings


@raters_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The rater's name, shown on the admin page.")],
    url: Annotated[
        str | None,
        typer.Option(help="Base URL raters open; default: DDPO_PUBLIC_URL or http://HOST:PORT."),
    ] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Create a rater and print their invite link (the token is shown only this once)."""
    from reward_server.invites import invite_link
    from reward_server.storage import QueueError

    store, settings = _store(database_url)
    try:
        _, token = store.add_rater(name)
    except QueueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    base = url or settings.public_url or f"http://{settings.host}:{settings.port}"
    typer.echo(invite_link(base, token))


@raters_app.command("list")
def list_raters(database_url: DatabaseOpt = None) -> None:
    """List raters (tokens cannot be shown: only their hashes are stored)."""
    store, _ = _store(database_url)
    try:
        for rater in store.list_raters():
            typer.echo(f"{rater['name']}{'  (revoked)' if rater['revoked'] else ''}")
    finally:
        store.close()


@raters_app.command("revoke")
def revoke(name: str, database_url: DatabaseOpt = None) -> None:
    """Revoke a rater's token at once; their ratings stay."""
    store, _ = _store(database_url)
    try:
        if not store.revoke_rater(name):
            typer.echo(f"error: no active rater named {name!r}", err=True)
            raise typer.Exit(1)
    finally:
        store.close()
    typer.echo(f"revoked {name}")


@ratings_app.command("export")
def export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write; jsonl default: stdout.")
    ] = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help="jsonl or parquet (needs pyarrow).")
    ] = "jsonl",
    images_dir: Annotated[
        Path | None,
        typer.Option(help="Also write each rated image as DIR/<item_id>.png (adds image_path)."),
    ] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Write every rating with its prompt, rater and item ids, oldest first.

    Pair (A/B) rows: `item_*` won over `other_*`, and `score` is empty.
    """
    fmt = format.lower()
    if fmt not in ("jsonl", "parquet"):
        typer.echo(f"error: --format must be jsonl or parquet, not {format!r}", err=True)
        raise typer.Exit(2)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            typer.echo(
                "error: parquet export needs pyarrow: `pip install pyarrow` "
                "(or use --format jsonl)",
                err=True,
            )
            raise typer.Exit(2) from None
        if output is None:
            typer.echo("error: parquet export needs --output FILE", err=True)
            raise typer.Exit(2)
    store, _ = _store(database_url)
    try:
        rows = list(store.export_rows())
        if images_dir is not None:
            _write_images(store, rows, images_dir)
    finally:
        store.close()
    _write(rows, fmt, output)  # type: ignore[arg-type]
    typer.echo(f"exported {len(rows)} rating(s)", err=True)


def _write_images(store: Any, rows: list[dict[str, Any]], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for row in rows:
        for key in ("item_id", "other_item_id"):
            item_id = row.get(key)
            if item_id is None:
                continue
            path = directory / f"{item_id}.png"
            if not path.exists():
                png = store.image_for(None, item_id)
                if png is not None:
                    path.write_bytes(png)
        row["image_path"] = str(directory / f"{row['item_id']}.png")
        if row.get("other_item_id") is not None:
            row["other_image_path"] = str(directory / f"{row['other_item_id']}.png")


def _write(
    rows: list[dict[str, Any]], fmt: Literal["jsonl", "parquet"], output: Path | None
) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = [{**r, "metadata": json.dumps(r["metadata"])} for r in rows]
        pq.write_table(pa.Table.from_pylist(records), output)
        return
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if output is None:
        sys.stdout.write(lines)
    else:
        output.write_text(lines, encoding="utf-8")
