"""Small reward heads and their descriptions for the reward-head tests, no fitting involved."""

from __future__ import annotations

from typing import Any

import torch

from reward_server.head_store import (
    HeadDescription,
    HeadMetrics,
    RewardHead,
)


def head_description(head: RewardHead, **kw: Any) -> HeadDescription:
    """A plausible description of `head`, any field overridden by `kw`."""
    fields: dict[str, Any] = dict(
        mode="score",
        clip_model="tiny",
        embed_dim=head.mlp[0].in_features,
        hidden=[head.mlp[0].out_features],
        dropout=0.1,
        score_mean=5.0,
        score_std=2.0,
        metrics=HeadMetrics(holdout_size=2, train_size=8, epochs=1),
        num_ratings=10,
        num_images=10,
        num_raters=1,
    )
    fields.update(kw)
    return HeadDescription(**fields)


def random_head(seed: int, dim: int = 64) -> RewardHead:
    """A random head on `dim`-wide embeddings, the same for the same seed."""
    torch.manual_seed(seed)
    return RewardHead(dim, [16]).eval()
