"""A whole fit: ratings -> embeddings -> head, saved as a new version and made LATEST."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from reward_server.clip_embedding import ClipEmbedder
from reward_server.fitting.embedding import embed_items
from reward_server.fitting.modes import compares_two_images, fit_pairs, fit_scores
from reward_server.fitting.options import FitOptions, FitProgress
from reward_server.fitting.ratings import RatingSource, gather_ratings
from reward_server.head_store import HeadDescription, RewardHeadInfo, save_head

log = logging.getLogger(__name__)


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
        head, metrics, score_mean, score_std, images = fit_scores(
            data, emb, options, device, progress
        )
        used = [r for r in data.scores if r[0] in emb.row_of]
    else:
        head, metrics, images = fit_pairs(data, emb, options, device, progress)
        score_mean, score_std = 0.0, 1.0
        used = [r for r in data.pairs if compares_two_images(r, emb.row_of)]
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
