"""The training loop both modes share: seeded AdamW, epochs chosen by early stopping."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from reward_server.fitting.options import FitOptions, FitProgress
from reward_server.head_store import RewardHead

#: Share of the training part set aside to choose the number of epochs, and the fewest
#: training units (images or pairs) for which that is done (below: all --epochs are run).
VALIDATION_SHARE = 0.15
MIN_FOR_EARLY_STOPPING = 20


def split_units(
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


def fit_with_early_stopping(
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
            inner, val = split_units(len(train), VALIDATION_SHARE, rng, least=2)
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
