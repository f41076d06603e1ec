"""The two fitting modes: regression on 1-10 scores, Bradley-Terry on A/B choices.

Each splits its own held-out part (images, or compared pairs), trains through
`training.fit_with_early_stopping` and measures the head on what it held out.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from reward_server.fitting.embedding import Embedded
from reward_server.fitting.metrics import pearson, spearman
from reward_server.fitting.options import FitOptions, FitProgress
from reward_server.fitting.ratings import MIN_PAIRS, MIN_SCORED_IMAGES, FitError, RatingData
from reward_server.fitting.training import fit_with_early_stopping, split_units
from reward_server.head_store import HeadMetrics, RewardHead


def fit_scores(
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
    train, held = split_units(len(rows), options.holdout, rng, least=2)
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

    head, epochs = fit_with_early_stopping(loss, x, train, rows[train], options, device, progress)
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


def compares_two_images(pair: tuple[int, int, str], row_of: dict[int, int]) -> bool:
    """Both images readable and not the same picture (which would teach nothing)."""
    w, lo = row_of.get(pair[0]), row_of.get(pair[1])
    return w is not None and lo is not None and w != lo


def fit_pairs(
    data: RatingData,
    emb: Embedded,
    options: FitOptions,
    device: torch.device,
    progress: FitProgress | None,
) -> tuple[RewardHead, HeadMetrics, int]:
    """Bradley-Terry on (winner, loser) rows; held out by compared pair, both orders together."""
    row = emb.row_of
    outcomes = [
        (row[w], row[lo]) for w, lo, r in data.pairs if compares_two_images((w, lo, r), row)
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
    train_g, held_g = split_units(len(keys), options.holdout, rng, least=1)
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
    head, epochs = fit_with_early_stopping(loss, x, train, train_rows, options, device, progress)
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
