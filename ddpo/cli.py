"""`ddpo`: the command line (train, serve, demo).

Heavy imports happen inside each command, so `ddpo serve` never loads
diffusers and `ddpo train` never loads fastapi.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ddpo.thread_defaults import apply_thread_defaults, command_of

app = typer.Typer(
    help="Fine-tune text-to-image diffusion models with DDPO against a reward server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    # Per-request lines from httpx and hub-library chatter drown the progress bars.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set num_epochs=5 (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint in output_dir.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Run DDPO fine-tuning as configured (works under `accelerate launch` / torchrun)."""
    from trainer.config import ConfigError, load_config

    _setup_logging(log_level)
    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    from trainer.reward_client import RewardError
    from trainer.train import train as run_train

    try:
        result = run_train(cfg, resume=resume)
    except RewardError as exc:
        console.print(f"[red]reward error:[/red] {exc}")
        raise typer.Exit(1) from None
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if result.final_weights is not None:
        console.print(f"done: {result.epochs_run} epochs; weights in {result.final_weights}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    scorers: Annotated[
        str | None,
        typer.Option(help="Comma-separated scorer names; default: every scorer at hand."),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", envvar="DDPO_API_KEY", help="Accepted API key (repeatable)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Run the reward server (FastAPI + uvicorn)."""
    from reward_server.serve import run_server

    names = [s.strip() for s in scorers.split(",") if s.strip()] if scorers else None
    run_server(host=host, port=port, scorers=names, api_keys=api_key or [], log_level=log_level)


@app.command()
def demo(
    reward: Annotated[
        str,
        typer.Option(
            help="prompt_fidelity (does the image show the prompt's shape, colour and "
            "background), jpeg_incompressibility (the reward-hacking example), "
            "jpeg_compressibility, or human "
            "(you rate the samples in a browser; the demo prints the link)."
        ),
    ] = "prompt_fidelity",
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Epochs; default 120 for prompt_fidelity, 15 JPEG, 12 human."),
    ] = None,
    output: Annotated[Path, typer.Option(help="Output directory.")] = Path("outputs/demo"),
    model: Annotated[
        str | None,
        typer.Option(
            help="A built-in tiny model, sd (default; SD 1.x-shaped) or flow (FLUX.1-shaped), "
            "or a pipeline directory."
        ),
    ] = None,
    rating_deadline: Annotated[
        float,
        typer.Option(
            min=1, help="--reward human: seconds an epoch waits for ratings before going on."
        ),
    ] = 600.0,
    prompt_weight: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="--reward human: weight of prompt_fidelity beside your ratings (weight 1), "
            "so the taste you teach does not cost the prompt's shape (default 1); 0: your "
            "ratings alone.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a training key, as for `ddpo train`."),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            help="Preset of training keys, algorithm included, for the automatic rewards "
            "(default: configs/presets/alignment-nft.toml for prompt_fidelity, "
            "small-budget-nft.toml for JPEG, both DiffusionNFT; "
            "configs/presets/small-budget-lora.toml: PPO)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "warning",
) -> None:
    """Fine-tune the built-in tiny model with DDPO through a local reward server (CPU, minutes)."""
    _setup_logging(log_level)
    from diffusers.utils.logging import disable_progress_bar
    from transformers.utils.logging import disable_progress_bar as quiet_transformers

    from ddpo.demo import resolve_model, run_demo
    from trainer.config import ConfigError

    disable_progress_bar()  # the demo loads its pipelines often: one bar per load is noise
    quiet_transformers()

    model_dir = resolve_model(model)
    try:
        result = run_demo(
            reward,
            epochs,
            output,
            model_dir,
            console=console,
            overrides=set_,
            rating_deadline_s=rating_deadline,
            recipe=recipe,
            **({} if prompt_weight is None else {"prompt_weight": prompt_weight}),
        )
    except (ValueError, FileNotFoundError, ConfigError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    out = result.output_dir
    if result.reward_before is not None and result.reward_after is not None:
        console.print(
            f"\n[bold]reward ({reward})[/bold] on {result.num_eval_images} held-out images "
            "(fixed prompts and seeds): "
            f"{result.reward_before:.3f} before -> {result.reward_after:.3f} after"
        )
        before, after = result.fidelity_before, result.fidelity_after
        if before is not None and after is not None:
            console.print(
                "all three attributes right, classifier / rule-based judge:\n"
                f"  held-out combinations ({before.images_held_out} images): "
                f"{before.classifier_held_out:.3f} / {before.rule_held_out:.3f} before -> "
                f"{after.classifier_held_out:.3f} / {after.rule_held_out:.3f} after\n"
                f"  seen combinations ({before.images_seen} images): "
                f"{before.classifier_seen:.3f} / {before.rule_seen:.3f} before -> "
                f"{after.classifier_seen:.3f} / {after.rule_seen:.3f} after"
            )
        for judged in result.fidelity_user:
            b, a = judged.before, judged.after
            console.print(
                f"as a user samples it ({judged.sampling}), classifier / rule-based judge:\n"
                f"  held-out: {b.classifier_held_out:.3f} / {b.rule_held_out:.3f} before -> "
                f"{a.classifier_held_out:.3f} / {a.rule_held_out:.3f} after; seen: "
                f"{b.classifier_seen:.3f} / {b.rule_seen:.3f} before -> "
                f"{a.classifier_seen:.3f} / {a.rule_seen:.3f} after"
            )
    else:
        console.print(
            f"\n[bold]{result.num_rated} ratings[/bold] used, {result.num_dropped} samples "
            "dropped unrated; compare the before/after rows to see your taste"
        )
    console.print(
        f"epoch reward: {result.first_epoch_reward:.3f} (first) -> "
        f"{result.last_epoch_reward:.3f} (last)\n"
        f"  {out / 'before_after.png'}\n  {out / 'reward_curve.png'}\n"
        f"  {out / 'metrics.jsonl'}\n  {result.weights}  (trained weights, diffusers format)\n"
        f"  tensorboard --logdir {out / 'tensorboard'}"
    )


def _add_rating_commands() -> None:
    """`ddpo raters` / `ddpo ratings`, from the reward server's package.

    That module imports typer alone at import time (no fastapi, no database
    driver), so registering it keeps `ddpo train` light; it is skipped if absent.
    """
    try:
        from reward_server.cli_ratings import raters_app, ratings_app
    except ImportError:
        return
    app.add_typer(raters_app, name="raters", help="Invite and manage human raters.")
    app.add_typer(ratings_app, name="ratings", help="Export human ratings.")


_add_rating_commands()


@app.command("fit-reward")
def fit_reward(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="SQLAlchemy URL; default: DATABASE_URL, else SQLite in DDPO_DATA_DIR (./data).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Head directory; default: DDPO_REWARD_HEAD_DIR, else DDPO_DATA_DIR/reward_head "
            "(where the server's reward_head scorer looks).",
        ),
    ] = None,
    clip_model: Annotated[
        str | None,
        typer.Option(
            help="CLIP hub id or local directory; default: DDPO_AESTHETIC_CLIP_MODEL "
            "(openai/clip-vit-large-patch14). Downloads only with DDPO_ALLOW_DOWNLOAD=1."
        ),
    ] = None,
    mode: Annotated[
        str, typer.Option(help="auto (score if there are 1-10 ratings, else pair), score or pair.")
    ] = "auto",
    holdout: Annotated[
        float, typer.Option(min=0.01, max=0.9, help="Share held out to measure the head.")
    ] = 0.2,
    epochs: Annotated[
        int, typer.Option(min=1, help="Most training epochs (early stopping picks fewer).")
    ] = 300,
    seed: Annotated[int, typer.Option(help="Seeds the split and the training.")] = 0,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "warning",
) -> None:
    """Fit a reward head on the collected ratings, for the server's `reward_head` scorer.

    Embeds every rated image with a frozen CLIP model, trains an MLP on the
    embeddings (regression on 1-10 scores, Bradley-Terry on A/B choices),
    reports how well it predicts held-out ratings, and saves it as a new version.
    """
    _setup_logging(log_level)
    try:
        from reward_server.fit_reward import FitError, describe_fit, run_fit_command
    except ImportError as exc:
        console.print(f"[red]error:[/red] fit-reward needs torch and transformers ({exc})")
        raise typer.Exit(2) from None
    from rich.progress import Progress, TaskID

    with Progress(console=console, transient=True, disable=not console.is_terminal) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done, total=total)

        try:
            info, directory = run_fit_command(
                database_url=database_url,
                output=output,
                clip_model=clip_model,
                mode=mode,
                holdout=holdout,
                epochs=epochs,
                seed=seed,
                progress=progress,
            )
        except FitError as exc:
            bars.stop()
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
            raise typer.Exit(2) from None
    for line in describe_fit(info, directory):
        typer.echo(line)


def main() -> None:
    # `ddpo serve` waits passively unless the user chose; training adapts its threads at run
    # time (trainer/thread_guard.py). Must happen before torch loads libgomp.
    apply_thread_defaults(os.environ, command_of(sys.argv))
    app()


if __name__ == "__main__":
    main()
