"""The demo's two figures: before/after images with their rewards, and the reward curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def before_after_png(
    path: Path,
    prompts: list[str],
    before: np.ndarray,
    after: np.ndarray,
    sb: np.ndarray | None,
    sa: np.ndarray | None,
    name: str,
    grid: tuple[np.ndarray | None, np.ndarray | None, int],
    method: str = "DDPO",
) -> None:
    """Two rows of images, same prompts and seeds; scores under each when there are any.

    `grid` holds the scores of the whole held-out grid and its size, for the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(before)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 4.2))
    for i in range(n):
        for row, (imgs, scores, label) in enumerate(((before, sb, "before"), (after, sa, "after"))):
            ax = axes[row, i]
            ax.imshow(imgs[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if scores is not None:
                ax.set_xlabel(f"{scores[i]:.2f}", fontsize=7)
            if i == 0:
                ax.set_ylabel(label, fontsize=9)
        title = prompts[i].removeprefix("a ").replace(" on a ", "\non ")
        axes[0, i].set_title(title, fontsize=6)
    grid_before, grid_after, grid_size = grid
    if grid_before is not None and grid_after is not None:
        title = (
            f"reward {name}, mean of {grid_size} held-out images: "
            f"{grid_before.mean():.3f} before -> {grid_after.mean():.3f} after"
        )
    else:
        title = f"reward {name}"
    fig.suptitle(
        f"{method} on the built-in tiny model, {title} (same prompts and seeds)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reward_curve_png(path: Path, records: list[dict], name: str, key: str = "reward") -> None:
    """Each epoch's mean and spread, and a running mean over a tenth of the run.

    `key`: the metrics' prefix, "reward" (the combined reward) or one scorer's
    ("reward_human" when the rater shares the run with another reward).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    mean = np.array([r[f"{key}_mean"] for r in records])
    std = np.array([r[f"{key}_std"] for r in records])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, mean, marker=".", alpha=0.6, label="mean")
    ax.fill_between(epochs, mean - std, mean + std, alpha=0.15, label="± std")
    if len(mean) >= 20:  # each epoch samples a few prompts: the trend shows over ~10 epochs
        w = len(mean) // 10
        ax.plot(
            epochs[w - 1 :],
            np.convolve(mean, np.ones(w) / w, "valid"),
            lw=2.5,
            label=f"{w}-epoch mean",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"reward ({name})")
    ax.set_title("Reward of each epoch's samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
