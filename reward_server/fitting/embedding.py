"""Rated images -> CLIP embeddings, one row per distinct picture."""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field

import torch
from PIL import Image

from reward_server.clip_embedding import ClipEmbedder
from reward_server.fitting.options import FitProgress
from reward_server.fitting.ratings import RatingSource

log = logging.getLogger(__name__)


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
