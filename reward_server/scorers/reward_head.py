"""`reward_head`: the reward people taught, served from `ddpo fit-reward`'s latest head.

Scores = the head (head_store.RewardHead) on normalised CLIP image embeddings,
mapped back to the 1-10 rating scale for heads fitted on scores (Bradley-Terry
log-strength for heads fitted on A/B choices). The scorer follows
`reward_head_dir/LATEST`: before a batch it looks at that one-line file (at
most once per `check_interval_s`) and, when it names a new version, loads it
and swaps it in, so a running server picks up a new fit without a restart.
A version that fails to load is logged and skipped; the old head keeps serving.
With no head at all the scorer still builds (a server may start before the
first fit) and answers 503 until one appears.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from reward_server.clip_embedding import ClipEmbedder, resolve_clip_spec
from reward_server.head_store import (
    VERSIONS_DIR,
    RewardHead,
    RewardHeadError,
    RewardHeadInfo,
    load_head,
    read_latest,
)
from reward_server.scorers.base import Scorer, ScorerNotReady, ScorerUnavailable
from reward_server.settings import ServerSettings

log = logging.getLogger(__name__)

#: Loads the CLIP model a head names (a spec as saved in head.json).
ClipLoader = Callable[[str], ClipEmbedder]

NO_HEAD_VERSION = "none"


@dataclass(frozen=True)
class _Loaded:
    """One head with its CLIP model: swapped in as a whole, never mutated."""

    head: RewardHead
    info: RewardHeadInfo
    clip: ClipEmbedder


class RewardHeadScorer(Scorer):
    name = "reward_head"
    kind = "sync"

    def __init__(
        self,
        directory: Path,
        clip_loader: ClipLoader,
        *,
        check_interval_s: float = 1.0,
        max_batch_size: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.check_interval_s = check_interval_s
        self.max_batch_size = max_batch_size
        self._clip_loader = clip_loader
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _Loaded | None = None
        # A cache by CLIP spec, so a new head on the same CLIP model loads in milliseconds;
        # it keeps only the model the current head uses.
        self._clips: dict[str, ClipEmbedder] = {}
        self._seen: str | None = None  # the LATEST content last acted on (loaded or failed)
        self._error: str | None = None  # why the last attempt failed, for the 503 detail
        self._checked_at = -float("inf")
        self._describe()
        self.reload()

    # -- loading ---------------------------------------------------------------------

    def reload(self, force: bool = False) -> bool:
        """Load the version LATEST names if it is new; True when a new head was swapped in.

        Cheap when nothing changed (one small file read), and throttled to once per
        `check_interval_s` unless `force`. Never raises: a broken version is logged,
        remembered (not retried until LATEST changes) and the current head stays.
        """
        with self._lock:
            now = self._clock()
            if not force and now - self._checked_at < self.check_interval_s:
                return False
            self._checked_at = now
            try:
                version = read_latest(self.directory)
            except RewardHeadError as exc:
                return self._failed(f"bad:{exc}", str(exc))
            if version == self._seen or version is None:
                return False  # unchanged, or nothing fitted yet: keep what we have
            try:
                loaded = self._load(version)
            except (RewardHeadError, ScorerUnavailable) as exc:
                return self._failed(version, f"reward head {version} failed to load: {exc}")
            except Exception as exc:  # whatever breaks, the old head must keep serving
                log.exception("loading reward head %s", version)
                return self._failed(
                    version, f"reward head {version} failed to load: {type(exc).__name__}: {exc}"
                )
            self._seen = version
            self._swap(loaded)
            return True

    def _failed(self, seen: str, error: str) -> bool:
        """Remember a failure, so it is logged once and not retried until LATEST changes."""
        if seen != self._seen:
            still = self._current.info.version if self._current else "no head"
            log.error("%s (in %s); still serving %s", error, self.directory, still)
        self._seen, self._error = seen, error
        return False

    def _load(self, version: str) -> _Loaded:
        head, info = load_head(self.directory / VERSIONS_DIR / version)
        clip = self._clips.get(info.clip_model)
        if clip is None:
            clip = self._clip_loader(info.clip_model)
        if clip.embed_dim != info.embed_dim:
            raise RewardHeadError(
                f"head {version} was fitted on {info.embed_dim}-dim embeddings but CLIP "
                f"{info.clip_model!r} gives {clip.embed_dim}"
            )
        return _Loaded(head.to(clip.device), info, clip)

    def _swap(self, loaded: _Loaded) -> None:
        self._current = loaded  # one reference assignment: a batch sees old or new, whole
        self._clips = {loaded.info.clip_model: loaded.clip}
        self._error = None
        self._describe()
        log.info(
            "reward head %s loaded (%s mode, CLIP %s, held-out %s)",
            loaded.info.version,
            loaded.info.mode,
            loaded.info.clip_model,
            _headline(loaded.info),
        )

    def _describe(self) -> None:
        loaded = self._current
        if loaded is None:
            self.version = NO_HEAD_VERSION
            self.description = (
                f"Learned reward from human ratings; no head loaded yet from {self.directory} "
                "(run `ddpo fit-reward`; it is picked up without a restart)."
            )
            return
        info = loaded.info
        scale = (
            "roughly the 1-10 rating scale"
            if info.mode == "score"
            else "Bradley-Terry log-strength"
        )
        self.version = info.version
        self.description = (
            f"Learned reward from human ratings: head {info.version} ({info.mode} mode, "
            f"{info.num_ratings} ratings of {info.num_images} images, held-out "
            f"{_headline(info)}) on CLIP {info.clip_model} embeddings; {scale}. "
            "New fits are picked up without a restart."
        )

    # -- scoring ---------------------------------------------------------------------

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        self.reload()
        loaded = self._current
        if loaded is None:
            why = f" ({self._error})" if self._error else ""
            raise ScorerNotReady(
                f"no reward head to score with in {self.directory}{why}: fit one with "
                "`ddpo fit-reward` (a running server picks it up without a restart)"
            )
        info = loaded.info
        with torch.inference_mode():
            raw = loaded.head(loaded.clip.embed_batch(images))
        scores = (raw.float().cpu() * info.score_std + info.score_mean).tolist()
        return scores, [{"head_version": info.version} for _ in images]


def _headline(info: RewardHeadInfo) -> str:
    m = info.metrics
    if info.mode == "score":
        value = m.holdout_pearson
        return f"Pearson r {value:.2f}" if value is not None else "Pearson r n/a"
    value = m.holdout_accuracy
    return f"accuracy {value:.2f}" if value is not None else "accuracy n/a"


def build(settings: ServerSettings) -> RewardHeadScorer:
    device = settings.resolve_device()

    def load_clip(spec: str) -> ClipEmbedder:
        resolved = resolve_clip_spec(spec, settings.models_dir)
        batch = 64 if device == "cuda" else 16
        return ClipEmbedder.load(
            resolved, allow_download=settings.allow_download, device=device, batch_size=batch
        )

    directory = settings.resolved_reward_head_dir()
    log.info("reward_head scorer: following %s", directory / "LATEST")
    return RewardHeadScorer(directory, load_clip, max_batch_size=64 if device == "cuda" else 16)
