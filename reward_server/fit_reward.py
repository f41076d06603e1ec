"""`ddpo fit-reward`'s glue: the server's settings, database and CLIP model -> one fit.

The fitting itself is reward_server/fitting/; the typer command is in
ddpo/cli.py, which imports FitError, describe_fit and run_fit_command from
here. Like the fitting, this module imports neither fastapi nor (until a
database is opened) SQLAlchemy: the trainer image runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reward_server.clip_embedding import ClipEmbedder, ClipUnavailable, resolve_clip_spec
from reward_server.fitting.options import FitOptions, FitProgress
from reward_server.fitting.pipeline import fit_reward_head
from reward_server.fitting.ratings import FitError
from reward_server.head_store import LATEST_FILE, VERSIONS_DIR, RewardHeadInfo

if TYPE_CHECKING:
    from reward_server.settings import ServerSettings

__all__ = ["FitError", "describe_fit", "run_fit_command"]


def describe_fit(info: RewardHeadInfo, directory: Path) -> list[str]:
    """What `ddpo fit-reward` prints: the head, its held-out figures, where it went."""
    m = info.metrics

    def f(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        f"reward head {info.version}: {info.mode} mode, {info.num_ratings} rating(s) of "
        f"{info.num_images} image(s) by {info.num_raters} rater(s), CLIP {info.clip_model}",
    ]
    if info.mode == "score":
        lines.append(
            f"held-out ({m.holdout_size} images): Pearson r {f(m.holdout_pearson)}, "
            f"Spearman {f(m.holdout_spearman)}, RMSE {f(m.holdout_rmse)} rating points "
            f"(train: Pearson r {f(m.train_pearson)} on {m.train_size}; {m.epochs} epochs)"
        )
    else:
        lines.append(
            f"held-out ({m.holdout_size} comparisons): accuracy {f(m.holdout_accuracy)} "
            f"(0.5 = chance), Bradley-Terry loss {f(m.holdout_loss)} "
            f"(train: accuracy {f(m.train_accuracy)} on {m.train_size}; {m.epochs} epochs)"
        )
    if m.holdout_size < 30:
        lines.append(
            f"(only {m.holdout_size} held out: that figure is rough; more ratings make it firmer)"
        )
    lines += [
        f"saved to {directory / VERSIONS_DIR / info.version}; {directory / LATEST_FILE} "
        "now names it",
        "a reward server running the `reward_head` scorer on this directory picks it up "
        "at its next request, without a restart",
    ]
    return lines


def _open_store(settings: ServerSettings) -> Any:
    """The rating database the server uses (same settings), refusing to create an empty one."""
    try:
        from sqlalchemy.engine import make_url

        from reward_server.storage import RatingStore
    except ImportError as exc:
        raise FitError(
            f"reading ratings needs the server extra (sqlalchemy, alembic): {exc}"
        ) from exc
    url = settings.resolved_database_url()
    parsed = make_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if file not in (None, "", ":memory:") and not Path(file).is_file():
        raise FitError(
            f"no rating database at {file}: collect ratings first "
            "(`ddpo serve --scorers human` and /rate), or pass --database-url / set "
            "DATABASE_URL or DDPO_DATA_DIR"
        )
    try:
        return RatingStore(url)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FitError(f"cannot open the rating database: {first}") from exc


def run_fit_command(
    *,
    database_url: str | None = None,
    output: Path | None = None,
    clip_model: str | None = None,
    mode: str = "auto",
    holdout: float = 0.2,
    epochs: int = 300,
    seed: int = 0,
    progress: FitProgress | None = None,
) -> tuple[RewardHeadInfo, Path]:
    """`ddpo fit-reward`'s work with the server's settings; every expected failure is a
    one-line FitError. Returns the saved head's info and the head directory.
    """
    from pydantic import ValidationError

    from reward_server.settings import ServerSettings

    try:
        options = FitOptions.model_validate(
            {"mode": mode, "holdout": holdout, "epochs": epochs, "seed": seed}
        )
        settings = ServerSettings(**({"database_url": database_url} if database_url else {}))
    except ValidationError as exc:
        raise FitError(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from None
    directory = output if output is not None else settings.resolved_reward_head_dir()
    spec = resolve_clip_spec(clip_model or settings.aesthetic_clip_model, settings.models_dir)
    if Path(spec).is_dir():
        spec = str(Path(spec).resolve())  # the server resolves it the same way later

    def load_clip() -> ClipEmbedder:
        device = settings.resolve_device()
        try:
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # ours is on screen; theirs would tear it
        except ImportError:
            pass  # ClipEmbedder.load says transformers is missing
        try:
            return ClipEmbedder.load(
                spec,
                allow_download=settings.allow_download,
                device=device,
                batch_size=64 if device == "cuda" else 16,
            )
        except ClipUnavailable as exc:
            first = str(exc).splitlines()[0]
            raise FitError(f"{first} (or pass --clip-model DIR with a local copy)") from exc

    store = _open_store(settings)
    try:
        info = fit_reward_head(store, load_clip, directory, options, progress)
    except OSError as exc:  # the head directory is not writable, the disk is full, ...
        raise FitError(f"cannot save the reward head under {directory}: {exc}") from exc
    finally:
        store.close()
    return info, directory
