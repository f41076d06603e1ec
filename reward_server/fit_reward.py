"""`ddpo fit-reward`: fit a reward head on people's ratings (the learning step of RLHF).

Every distinct rated image is embedded once with a frozen CLIP model; an MLP
(reward_head.RewardHead) is then trained on the embeddings:

- score mode (1-10 ratings): regression on each image's mean rating,
  standardised, each image weighted by its number of ratings (the same optimum
  as a per-rating squared error);
- pair mode (A/B choices): Bradley-Terry, loss = -log sigmoid(r(winner) - r(loser)).

A random share of images (score) or of compared pairs (pair) is held out and
never used for any choice; the reported held-out figures describe the saved
head. The number of epochs is picked by early stopping on a further split of
the training part, after which the head is retrained on the whole training
part for that many epochs. Everything is seeded: the same ratings, CLIP model
and options give the same head on CPU.

This module imports neither fastapi nor the database layer: it reads ratings
through anything with RatingStore's `export_rows` and `image_for`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from reward_server.clip_embedding import ClipEmbedder, ClipUnavailable, resolve_clip_spec
from reward_server.reward_head import (
    LATEST_FILE,
    VERSIONS_DIR,
    HeadDescription,
    HeadMetrics,
    RewardHead,
    RewardHeadInfo,
    save_head,
)

if TYPE_CHECKING:
    from reward_server.settings import ServerSettings

log = logging.getLogger(__name__)

#: Fewest distinct rated images (score mode) or comparisons (pair mode) worth fitting on.
MIN_SCORED_IMAGES = 10
MIN_PAIRS = 10
#: Share of the training part set aside to choose the number of epochs, and the fewest
#: training units (images or pairs) for which that is done (below: all --epochs are run).
VALIDATION_SHARE = 0.15
MIN_FOR_EARLY_STOPPING = 20

#: progress(phase, done, total); phases "embedding", "early stopping", "training".
FitProgress = Callable[[str, int, int], None]


class FitError(ValueError):
    """The ratings cannot give a head (too few, wrong mode); the message says what to do."""


class RatingSource(Protocol):
    """What the fitter needs of a rating database (RatingStore has both)."""

    def export_rows(self) -> Iterator[dict[str, Any]]: ...

    def image_for(self, rater_id: int | None, item_id: int) -> bytes | None: ...


class FitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "score", "pair"] = Field(
        "auto", description="auto: score if there are 1-10 ratings, else pair."
    )
    holdout: float = Field(0.2, gt=0, lt=1, description="Share held out for the reported metric.")
    epochs: int = Field(300, ge=1, description="Most epochs; early stopping usually ends sooner.")
    patience: int = Field(30, ge=1, description="Epochs without validation gain before stopping.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    batch_size: int = Field(256, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [256, 64])
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 0


@dataclass
class RatingData:
    """The ratings of one mode, by item id (before identical images are merged)."""

    mode: Literal["score", "pair"]
    scores: list[tuple[int, int, str]] = field(default_factory=list)  # item, score, rater
    pairs: list[tuple[int, int, str]] = field(default_factory=list)  # winner, loser, rater

    def item_ids(self) -> list[int]:
        if self.mode == "score":
            ids = (item for item, _, _ in self.scores)
        else:
            ids = (i for w, lo, _ in self.pairs for i in (w, lo))
        return list(dict.fromkeys(ids))


def gather_ratings(rows: Iterable[dict[str, Any]], mode: str = "auto") -> RatingData:
    """Split exported rating rows into 1-10 scores and A/B outcomes; pick the mode."""
    scores: list[tuple[int, int, str]] = []
    pairs: list[tuple[int, int, str]] = []
    for row in rows:
        if row.get("other_item_id") is not None:
            pairs.append((int(row["item_id"]), int(row["other_item_id"]), str(row["rater"])))
        elif row.get("score") is not None:
            scores.append((int(row["item_id"]), int(row["score"]), str(row["rater"])))
    if mode == "auto":
        if not scores and not pairs:
            raise FitError(
                "too few ratings: the database has none yet; fitting needs 1-10 ratings of at "
                f"least {MIN_SCORED_IMAGES} images (scorer `human`) or at least {MIN_PAIRS} A/B "
                "comparisons (scorer `human_pairwise`), collected on /rate"
            )
        mode = "score" if scores else "pair"
    if mode not in ("score", "pair"):
        raise FitError(f"mode must be auto, score or pair, not {mode!r}")
    if mode == "score" and len({item for item, _, _ in scores}) < MIN_SCORED_IMAGES:
        raise FitError(
            f"too few ratings: score mode needs 1-10 ratings of at least {MIN_SCORED_IMAGES} "
            f"images, the database has {len(scores)} rating(s) of "
            f"{len({item for item, _, _ in scores})} image(s) (and {len(pairs)} A/B "
            "comparison(s)); collect more on /rate (scorer `human`)"
        )
    if mode == "pair" and len(pairs) < MIN_PAIRS:
        raise FitError(
            f"too few ratings: pair mode needs at least {MIN_PAIRS} A/B comparisons, the "
            f"database has {len(pairs)} (and {len(scores)} 1-10 rating(s)); collect more on "
            "/rate (scorer `human_pairwise`)"
        )
    if mode == "score":
        return RatingData("score", scores=scores)
    return RatingData("pair", pairs=pairs)


@dataclass
class Embedded:
    """One row per distinct image: items whose PNGs are identical share a row."""

    embeds: torch.Tensor  # (rows, dim), float32, CPU
    row_of: dict[int, int]  # item id -> row
    skipped: list[int] = field(default_factory=list)  # items without a readable image


def embed_items(
    source: RatingSource,
    item_ids: list[int],
    embedder: ClipEmbedder,
    progress: FitProgress | None = None,
) -> Embedded:
    """Fetch, decode and embed each distinct image once, a batch at a time (bounded memory)."""
    row_of: dict[int, int] = {}
    row_of_digest: dict[str, int] = {}
    skipped: list[int] = []
    chunks: list[torch.Tensor] = []
    batch: list[Image.Image] = []
    rows = 0

    def flush() -> None:
        if batch:
            chunks.append(embedder.embed_batch(batch).cpu())
            batch.clear()

    for done, item_id in enumerate(item_ids, 1):
        png = source.image_for(None, item_id)
        if png is None:
            skipped.append(item_id)
            continue
        digest = hashlib.sha256(png).hexdigest()
        if digest in row_of_digest:
            row_of[item_id] = row_of_digest[digest]
        else:
            try:
                image = Image.open(io.BytesIO(png)).convert("RGB")
            except Exception as exc:  # a damaged image loses its ratings, not the whole fit
                log.warning(
                    "item %d: cannot decode its image (%s); its ratings are left out", item_id, exc
                )
                skipped.append(item_id)
                continue
            batch.append(image)
            row_of[item_id] = row_of_digest[digest] = rows
            rows += 1
            if len(batch) >= embedder.batch_size:
                flush()
        if progress is not None:
            progress("embedding", done, len(item_ids))
    flush()
    embeds = torch.cat(chunks) if chunks else torch.empty(0, embedder.embed_dim)
    return Embedded(embeds.float(), row_of, skipped)


# -- statistics ------------------------------------------------------------------------


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None when it is undefined (fewer than 2 points, or a constant)."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank (as Spearman's rho wants)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse = np.unique(x, return_inverse=True)
    return (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    return pearson(_ranks(x), _ranks(y))


# -- training --------------------------------------------------------------------------


def _split(
    n: int, share: float, rng: np.random.Generator, least: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random (rest, held) split of range(n) holding out about `share`, at least `least`."""
    order = rng.permutation(n)
    held = max(least, round(share * n))
    return np.sort(order[held:]), np.sort(order[:held])


#: The mean loss of a head over training units (images or pairs), given their indices.
UnitLoss = Callable[[RewardHead, torch.Tensor], torch.Tensor]


def _train(
    loss_fn: UnitLoss,
    train: np.ndarray,
    head: RewardHead,
    epochs: int,
    options: FitOptions,
    device: torch.device,
    val: np.ndarray | None = None,
    progress: FitProgress | None = None,
    phase: str = "training",
) -> int:
    """AdamW over shuffled mini-batches of `train`; with `val`, stop once it stops improving.

    Returns the number of epochs trained (with val: the best epoch, its weights restored).
    """
    optim = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    units = torch.as_tensor(train, device=device)
    best = (math.inf, 0, None)
    for epoch in range(1, epochs + 1):
        head.train()
        for chunk in units[torch.randperm(len(units), device=device)].split(options.batch_size):
            optim.zero_grad(set_to_none=True)
            loss_fn(head, chunk).backward()
            optim.step()
        if progress is not None:
            progress(phase, epoch, epochs)
        if val is None:
            continue
        head.eval()
        with torch.no_grad():
            loss = float(loss_fn(head, torch.as_tensor(val, device=device)))
        if loss < best[0] - 1e-6:
            best = (loss, epoch, {k: v.clone() for k, v in head.state_dict().items()})
        elif epoch - best[1] >= options.patience:
            break
    if val is None or best[2] is None:
        return epochs
    head.load_state_dict(best[2])
    return best[1]


def _fit(
    loss_fn: UnitLoss,
    embeds: torch.Tensor,
    train: np.ndarray,
    train_rows: np.ndarray,
    options: FitOptions,
    device: torch.device,
    progress: FitProgress | None,
) -> tuple[RewardHead, int]:
    """Choose the epoch count on a validation split of `train`, then train on all of it."""
    rng = np.random.default_rng(options.seed + 1)

    def fresh() -> RewardHead:
        head = RewardHead(embeds.shape[1], options.hidden, options.dropout).to(device)
        rows = embeds[torch.as_tensor(train_rows, device=device)]
        head.input_mean.copy_(rows.mean(0))
        if len(rows) > 1:
            head.input_std.copy_(rows.std(0).clamp_min(1e-6))
        return head

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(options.seed)
        epochs = options.epochs
        if len(train) >= MIN_FOR_EARLY_STOPPING:
            inner, val = _split(len(train), VALIDATION_SHARE, rng, least=2)
            epochs = _train(
                loss_fn,
                train[inner],
                fresh(),
                options.epochs,
                options,
                device,
                train[val],
                progress,
                "early stopping",
            )
        torch.manual_seed(options.seed)
        head = fresh()
        _train(loss_fn, train, head, epochs, options, device, progress=progress)
    return head.eval(), epochs


def _fit_scores(
    data: RatingData,
    emb: Embedded,
    options: FitOptions,
    device: torch.device,
    progress: FitProgress | None,
) -> tuple[RewardHead, HeadMetrics, float, float, int]:
    """Regression on standardised mean ratings per image; returns the head, metrics, scale."""
    given: dict[int, list[int]] = defaultdict(list)
    for item, score, _ in data.scores:
        if item in emb.row_of:
            given[emb.row_of[item]].append(score)
    rows = np.array(sorted(given))
    if len(rows) < MIN_SCORED_IMAGES:
        raise FitError(
            f"too few ratings: only {len(rows)} distinct rated image(s) could be read "
            f"(at least {MIN_SCORED_IMAGES} needed)"
        )
    means = np.array([np.mean(given[r]) for r in rows])
    counts = np.array([len(given[r]) for r in rows], dtype=np.float64)
    rng = np.random.default_rng(options.seed)
    train, held = _split(len(rows), options.holdout, rng, least=2)
    if len(train) < 5:
        raise FitError(
            f"--holdout {options.holdout} leaves {len(train)} image(s) to train on; lower it"
        )
    w = counts[train]
    score_mean = float(np.average(means[train], weights=w))
    # Spread of the single ratings (not of the means), so a score reads in rating points.
    spread = [s for r in rows[train] for s in given[int(r)]]
    score_std = float(np.std(spread)) or 1.0

    x = emb.embeds.to(device)
    target = torch.as_tensor((means - score_mean) / score_std, dtype=torch.float32, device=device)
    weight = torch.as_tensor(counts, dtype=torch.float32, device=device)
    row_t = torch.as_tensor(rows, device=device)

    def loss(head: RewardHead, units: torch.Tensor) -> torch.Tensor:
        pred = head(x[row_t[units]])
        wt = weight[units]
        return (wt * (pred - target[units]) ** 2).sum() / wt.sum()

    head, epochs = _fit(loss, x, train, rows[train], options, device, progress)
    with torch.no_grad():
        pred = (head(x[row_t]).cpu().numpy() * score_std + score_mean).astype(np.float64)
    metrics = HeadMetrics(
        holdout_size=len(held),
        train_size=len(train),
        holdout_pearson=pearson(pred[held], means[held]),
        holdout_spearman=spearman(pred[held], means[held]),
        holdout_rmse=float(np.sqrt(np.mean((pred[held] - means[held]) ** 2))),
        train_pearson=pearson(pred[train], means[train]),
        epochs=epochs,
    )
    return head, metrics, score_mean, score_std, len(rows)


def _compares_two_images(pair: tuple[int, int, str], row_of: dict[int, int]) -> bool:
    """Both images readable and not the same picture (which would teach nothing)."""
    w, lo = row_of.get(pair[0]), row_of.get(pair[1])
    return w is not None and lo is not None and w != lo


def _fit_pairs(
    data: RatingData,
    emb: Embedded,
    options: FitOptions,
    device: torch.device,
    progress: FitProgress | None,
) -> tuple[RewardHead, HeadMetrics, int]:
    """Bradley-Terry on (winner, loser) rows; held out by compared pair, both orders together."""
    row = emb.row_of
    outcomes = [
        (row[w], row[lo]) for w, lo, r in data.pairs if _compares_two_images((w, lo, r), row)
    ]
    if len(outcomes) < MIN_PAIRS:
        raise FitError(
            f"too few ratings: only {len(outcomes)} comparison(s) of two different readable "
            f"images (at least {MIN_PAIRS} needed)"
        )
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (w, lo) in enumerate(outcomes):
        groups[(min(w, lo), max(w, lo))].append(i)
    keys = sorted(groups)
    rng = np.random.default_rng(options.seed)
    train_g, held_g = _split(len(keys), options.holdout, rng, least=1)
    if len(train_g) < 5:
        raise FitError(
            f"--holdout {options.holdout} leaves {len(train_g)} pair(s) to train on; lower it"
        )
    train = np.array(sorted(i for g in train_g for i in groups[keys[g]]))
    held = np.array(sorted(i for g in held_g for i in groups[keys[g]]))

    x = emb.embeds.to(device)
    pair_t = torch.as_tensor(outcomes, device=device)

    def loss(head: RewardHead, units: torch.Tensor) -> torch.Tensor:
        w, lo = pair_t[units, 0], pair_t[units, 1]
        return F.softplus(head(x[lo]) - head(x[w])).mean()  # -log sigmoid(r_w - r_l)

    train_rows = np.unique(np.asarray(outcomes)[train])
    head, epochs = _fit(loss, x, train, train_rows, options, device, progress)
    with torch.no_grad():
        r = head(x).cpu().numpy().astype(np.float64)
    margin = np.array([r[w] - r[lo] for w, lo in outcomes])

    def accuracy(idx: np.ndarray) -> float:
        m = margin[idx]
        return float(np.mean((m > 0) + 0.5 * (m == 0)))

    def bt_loss(idx: np.ndarray) -> float:
        return float(np.mean(np.logaddexp(0.0, -margin[idx])))

    metrics = HeadMetrics(
        holdout_size=len(held),
        train_size=len(train),
        holdout_accuracy=accuracy(held),
        holdout_loss=bt_loss(held),
        train_accuracy=accuracy(train),
        train_loss=bt_loss(train),
        epochs=epochs,
    )
    return head, metrics, len(np.unique(np.asarray(outcomes)))


def fit_reward_head(
    source: RatingSource,
    embedder: ClipEmbedder | Callable[[], ClipEmbedder],
    output_dir: Path,
    options: FitOptions | None = None,
    progress: FitProgress | None = None,
) -> RewardHeadInfo:
    """Read the ratings, embed their images, fit, save as a new version and make it LATEST.

    `embedder` may be a function that loads it: it is called only once the ratings
    have been checked, so "too few ratings" comes before a large model load.
    """
    options = options or FitOptions()
    data = gather_ratings(source.export_rows(), options.mode)
    if not isinstance(embedder, ClipEmbedder):
        embedder = embedder()
    emb = embed_items(source, data.item_ids(), embedder, progress)
    if emb.skipped:
        log.warning("%d rated item(s) had no readable image and were left out", len(emb.skipped))
    device = embedder.device
    if data.mode == "score":
        head, metrics, score_mean, score_std, images = _fit_scores(
            data, emb, options, device, progress
        )
        used = [r for r in data.scores if r[0] in emb.row_of]
    else:
        head, metrics, images = _fit_pairs(data, emb, options, device, progress)
        score_mean, score_std = 0.0, 1.0
        used = [r for r in data.pairs if _compares_two_images(r, emb.row_of)]
    description = HeadDescription(
        mode=data.mode,
        clip_model=embedder.spec,
        embed_dim=embedder.embed_dim,
        hidden=list(options.hidden),
        dropout=options.dropout,
        score_mean=score_mean,
        score_std=score_std,
        metrics=metrics,
        num_ratings=len(used),
        num_images=images,
        num_raters=len({r[2] for r in used}),
        fit_options=options.model_dump(exclude={"hidden"}),
    )
    return save_head(head.cpu(), description, output_dir)


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
