"""Checkpoints: user-facing weights plus the exact trainer state needed to resume."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainer.ema import EMA
from trainer.lora import save_lora
from trainer.rng_state import RngState, capture_rng_state, restore_rng_state

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
EMA_FILE = "ema.safetensors"
#: The training algorithm's own state (the old policy of nft / awm); absent for PPO.
ALGORITHM_FILE = "algorithm.safetensors"


@dataclass
class ResumeState:
    epoch: int  # the next epoch to run
    global_step: int
    stat_tracker: dict[str, Any]
    family: str
    use_lora: bool


def trainable_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in unet.named_parameters() if p.requires_grad}


def save_checkpoint(
    directory: Path,
    *,
    pipeline_cls,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: ResumeState,
    keep: int,
    scaler: torch.amp.GradScaler | None = None,
    rng_states: list[RngState] | None = None,
    ema: EMA | None = None,
    denoiser_name: str = "unet",
    algorithm_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoints/epoch_NNNN/ atomically (tmp dir then rename) and prune old ones.

    `rng_states` holds every rank's generators (default: this process's alone);
    `scaler` is fp16's loss scaler, whose scale a resume must not reset. With
    `ema` the user-facing weights (lora/ or `denoiser_name`/: unet/ or transformer/) are the
    moving average.
    """
    root = directory / "checkpoints"
    final = root / f"epoch_{state.epoch:04d}"
    tmp = root / f".tmp_epoch_{state.epoch:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(unet), str(tmp / TRAINABLE_FILE))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "rng_states": rng_states if rng_states is not None else [capture_rng_state()],
            "scaler": scaler.state_dict() if scaler is not None else None,
        },
        tmp / OPTIMIZER_FILE,
    )
    (tmp / STATE_FILE).write_text(json.dumps(state.__dict__, indent=1))
    if ema is not None:
        save_file(ema.state_dict(), str(tmp / EMA_FILE))
    if algorithm_state:
        save_file(algorithm_state, str(tmp / ALGORITHM_FILE))
    with ema.swapped_in() if ema is not None else contextlib.nullcontext():
        if state.use_lora:
            save_lora(pipeline_cls, unet, tmp / "lora")
        else:
            unet.save_pretrained(tmp / denoiser_name, safe_serialization=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("epoch_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted((directory / "checkpoints").glob("epoch_*"))
    return found[-1] if found else None


def load_checkpoint(
    path: Path,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    rank: int = 0,
    world_size: int = 1,
    ema: EMA | None = None,
) -> ResumeState:
    """Restore trainable weights, optimizer, loss scaler and this rank's RNG.

    Loading is weights_only (no pickle). A checkpoint from another number of
    processes still resumes, with a warning: the RNG streams cannot match then.
    """
    trainable = load_file(str(path / TRAINABLE_FILE))
    expected = {n for n, p in unet.named_parameters() if p.requires_grad}
    if set(trainable) != expected:
        missing = sorted(expected - set(trainable))[:3]
        extra = sorted(set(trainable) - expected)[:3]
        raise ValueError(
            f"checkpoint {path} does not match this model (missing {missing}, unexpected "
            f"{extra}); was it made with other use_lora / lora_* settings?"
        )
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    blob = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    _restore_rng(blob, rank, world_size, path)
    _restore_scaler(blob.get("scaler"), scaler, path)
    if ema is not None:
        if not (path / EMA_FILE).is_file():
            raise ValueError(f"checkpoint {path} has no {EMA_FILE}: it was made without ema_decay")
        ema.load_state_dict(load_file(str(path / EMA_FILE)))
    data = json.loads((path / STATE_FILE).read_text())
    return ResumeState(**data)


def load_algorithm_state(path: Path) -> dict[str, torch.Tensor]:
    """What `algorithm_state` saved in checkpoint `path` ({} if nothing was)."""
    file = path / ALGORITHM_FILE
    return load_file(str(file)) if file.is_file() else {}


def _restore_rng(blob: dict[str, Any], rank: int, world_size: int, path: Path) -> None:
    states = blob.get("rng_states")
    if states is None:  # checkpoints of before 2026-12 kept the main process's torch RNG
        torch.set_rng_state(blob["torch_rng"])
        return
    if len(states) != world_size:
        log.warning(
            "checkpoint %s was written by %d processes, this run has %d: RNG streams differ",
            path,
            len(states),
            world_size,
        )
    restore_rng_state(states[rank % len(states)])


def _restore_scaler(
    saved: dict[str, Any] | None, scaler: torch.amp.GradScaler | None, path: Path
) -> None:
    if scaler is not None and saved is not None:
        scaler.load_state_dict(saved)
    elif scaler is not None:
        log.warning("checkpoint %s has no fp16 loss-scaler state; the scale starts afresh", path)
