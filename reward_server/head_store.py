"""The learned reward head (an MLP on frozen CLIP image embeddings) and its store on disk.

The `reward_head` scorer (scorers/reward_head.py) serves what `ddpo fit-reward` saves here.

Layout of a head directory (`reward_head_dir`, default data_dir/reward_head):

    versions/<version>/head.safetensors   weights (safetensors: tensors only, never pickle)
    versions/<version>/head.json          RewardHeadInfo: how to use it, how it was fitted
    LATEST                                the version to serve, one line

A version directory is written under a temporary name and renamed into place
when complete; LATEST is replaced atomically after that. A reader that follows
LATEST therefore never sees half a head, and the weights' sha256 recorded in
head.json catches a file damaged later. Versions are `YYYYmmddTHHMMSS-<first 8
hex of the weights' sha256>` (UTC), so they sort by time and name their content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

FORMAT = "ddpo-reward-head"
FORMAT_VERSION = 1
WEIGHTS_FILE = "head.safetensors"
INFO_FILE = "head.json"
LATEST_FILE = "LATEST"
VERSIONS_DIR = "versions"
_VERSION_RE = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{8}$")


class RewardHeadError(ValueError):
    """A head directory or file is missing, malformed or does not match its description."""


class HeadMetrics(BaseModel):
    """How well the head predicts ratings it was not trained on (and the ones it was).

    Score mode: Pearson and Spearman correlation between predicted and mean rated
    score per held-out image, and the RMSE in rating points. Pair mode: the share
    of held-out comparisons whose winner the head scores higher (0.5 = chance),
    and the mean Bradley-Terry loss on them (log 2 = 0.693 = chance).
    """

    model_config = ConfigDict(extra="forbid")

    holdout_size: int = Field(..., description="Held-out images (score) or comparisons (pair).")
    train_size: int
    holdout_pearson: float | None = None
    holdout_spearman: float | None = None
    holdout_rmse: float | None = None
    holdout_accuracy: float | None = None
    holdout_loss: float | None = None
    train_pearson: float | None = None
    train_accuracy: float | None = None
    train_loss: float | None = None
    epochs: int = Field(..., description="Epochs the saved head was trained for.")


class HeadDescription(BaseModel):
    """What the fitter knows about a head before it is saved (head.json less the identity)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format: Literal["ddpo-reward-head"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    mode: Literal["score", "pair"] = Field(
        ..., description="score: regression on 1-10 ratings; pair: Bradley-Terry on A/B choices."
    )
    clip_model: str = Field(..., description="CLIP spec the embeddings came from.")
    embed_dim: int = Field(..., gt=0)
    hidden: list[int] = Field(..., description="Hidden layer widths.")
    dropout: float = Field(..., ge=0, lt=1)
    score_mean: float = Field(
        0.0, description="Score = score_mean + score_std * output (the 1-10 scale in score mode)."
    )
    score_std: float = Field(1.0, gt=0)
    metrics: HeadMetrics
    num_ratings: int = Field(..., description="Ratings used (scores or comparisons).")
    num_images: int = Field(..., description="Distinct images they rated.")
    num_raters: int
    fit_options: dict[str, float | int | str] = Field(default_factory=dict)


class RewardHeadInfo(HeadDescription):
    """head.json: everything needed to rebuild and use the head, and how it was fitted."""

    version: str = Field(..., description="YYYYmmddTHHMMSS-<8 hex of the weights' sha256>.")
    weights_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    created_at: datetime


class RewardHead(nn.Module):
    """Standardise the embedding, then an MLP to one number.

    Normalised CLIP embeddings of one kind of image differ in small amounts
    spread over all dimensions; standardising with the training set's mean
    and std (kept as buffers, saved with the weights) lets a small MLP fitted
    on a few hundred ratings pick those differences up.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 64), dropout: float = 0.1):
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N,) raw outputs (standardised score, or Bradley-Terry log-strength)."""
        return self.mlp((embeds - self.input_mean) / self.input_std).squeeze(-1)


def new_head(info: HeadDescription) -> RewardHead:
    return RewardHead(info.embed_dim, info.hidden, info.dropout)


def make_version(weights: bytes, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%S}-{hashlib.sha256(weights).hexdigest()[:8]}"


def _serialise(head: RewardHead) -> bytes:
    from safetensors.torch import save

    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()
    }
    return save(state, metadata={"format": FORMAT})


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible everywhere (Windows); the renames are still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_head(
    head: RewardHead, description: HeadDescription, directory: Path, *, make_latest: bool = True
) -> RewardHeadInfo:
    """Write a new version under `directory`, then (by default) point LATEST at it.

    The version, checksum and creation time are derived here from the weights.
    Returns the saved head.json content.
    """
    weights = _serialise(head)
    now = datetime.now(UTC).replace(microsecond=0)
    info = RewardHeadInfo(
        **description.model_dump(),
        version=make_version(weights, now),
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        created_at=now,
    )
    versions = directory / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / info.version
    if not final.is_dir():
        # Staged under a dot-name no reader follows, renamed into place when complete.
        # (os.mkdir, not tempfile: the umask applies, so a server running as another
        # user can read the head; tempfile would make it private to this user.)
        staging = versions / f".{info.version}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            _write_synced(staging / WEIGHTS_FILE, weights)
            _write_synced(staging / INFO_FILE, info.model_dump_json(indent=2).encode() + b"\n")
            _fsync_dir(staging)
            os.replace(staging, final)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not final.is_dir():  # else another writer saved these very weights first
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(versions)
    if make_latest:
        point_latest(directory, info.version)
    return info


def point_latest(directory: Path, version: str) -> None:
    """Atomically make `version` (which must be complete on disk) the one to serve."""
    load_info(directory / VERSIONS_DIR / version)  # refuse to point at a broken version
    tmp = directory / f".LATEST-{secrets.token_hex(4)}"
    try:
        _write_synced(tmp, version.encode() + b"\n")
        os.replace(tmp, directory / LATEST_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def read_latest(directory: Path) -> str | None:
    """The version LATEST names, or None when nothing was saved yet."""
    try:
        text = (directory / LATEST_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RewardHeadError(f"cannot read {directory / LATEST_FILE}: {exc}") from exc
    if not _VERSION_RE.match(text):
        raise RewardHeadError(
            f"{directory / LATEST_FILE} holds {text[:40]!r}, not a version like "
            "20261125T101500-0123abcd"
        )
    return text


def load_info(version_dir: Path) -> RewardHeadInfo:
    path = version_dir / INFO_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RewardHeadError(f"reward head {version_dir.name}: cannot read {path}: {exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RewardHeadError(f"reward head {version_dir.name}: {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RewardHeadError(f"{path} is not a {FORMAT} description (format field)")
    if data.get("format_version") != FORMAT_VERSION:
        raise RewardHeadError(
            f"{path} has format_version {data.get('format_version')!r}; this server reads "
            f"{FORMAT_VERSION} (upgrade the server, or refit with this version)"
        )
    try:
        info = RewardHeadInfo.model_validate(data)
    except ValidationError as exc:
        raise RewardHeadError(f"{path} is malformed: {exc}") from exc
    if info.version != version_dir.name:
        raise RewardHeadError(f"{path} describes version {info.version}, not {version_dir.name}")
    return info


def load_head(version_dir: Path) -> tuple[RewardHead, RewardHeadInfo]:
    """Rebuild a saved head, checking its checksum and every tensor's name and shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    info = load_info(version_dir)
    path = version_dir / WEIGHTS_FILE
    try:
        weights = path.read_bytes()
    except OSError as exc:
        raise RewardHeadError(f"reward head {info.version}: cannot read {path}: {exc}") from exc
    digest = hashlib.sha256(weights).hexdigest()
    if digest != info.weights_sha256:
        raise RewardHeadError(
            f"{path} does not match its head.json (sha256 {digest[:12]}..., "
            f"expected {info.weights_sha256[:12]}...): the file is damaged or was replaced"
        )
    try:
        state = load(weights)
    except (SafetensorError, ValueError) as exc:
        raise RewardHeadError(f"{path} is not a safetensors file: {exc}") from exc
    head = new_head(info)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        diff = sorted(set(found.items()) ^ set(expected.items()))[:4]
        raise RewardHeadError(f"{path} does not fit the head head.json describes: {diff}")
    head.load_state_dict(state, strict=True)
    return head.eval().requires_grad_(False), info


def load_latest(directory: Path) -> tuple[RewardHead, RewardHeadInfo] | None:
    """The head LATEST names; None when nothing was saved yet."""
    version = read_latest(directory)
    if version is None:
        return None
    return load_head(directory / VERSIONS_DIR / version)
