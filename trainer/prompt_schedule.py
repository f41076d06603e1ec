"""Which prompt each sample of an epoch gets, the same on every rank and after a resume."""

from __future__ import annotations

import numpy as np

from trainer.config import TrainConfig


def samples_per_epoch(cfg: TrainConfig, world_size: int) -> int:
    return world_size * cfg.sample_num_batches_per_epoch * cfg.sample_batch_size


def check_group_layout(cfg: TrainConfig, world_size: int) -> None:
    """Groups tile the epoch's samples across ranks; refuse a layout where they cannot."""
    total = samples_per_epoch(cfg, world_size)
    if total % cfg.sample_group_size:
        raise ValueError(
            f"sample_group_size ({cfg.sample_group_size}) must divide the samples per epoch "
            f"over all processes ({total} = {world_size} processes x "
            f"sample_num_batches_per_epoch {cfg.sample_num_batches_per_epoch} x "
            f"sample_batch_size {cfg.sample_batch_size})"
        )


def batch_prompt_ids(
    cfg: TrainConfig, num_prompts: int, epoch: int, rank: int, world_size: int, batch: int
) -> list[int]:
    """Prompt indices of one sampling batch of one rank.

    Without groups every sample draws its prompt independently. With groups of
    k, an epoch draws total / k prompts and lays each out k times in a row, in
    global sample order (rank, batch, item), so a group may span batches and
    ranks; its samples differ by their seeds.
    """
    size = cfg.sample_batch_size
    if cfg.sample_group_size == 1:
        rng = np.random.default_rng([cfg.seed, epoch, rank, batch, 7])
        return rng.integers(0, num_prompts, size=size).tolist()
    first = (rank * cfg.sample_num_batches_per_epoch + batch) * size
    groups = group_ids(cfg, first, size)
    chosen = _group_prompts(cfg, num_prompts, epoch, world_size)
    return chosen[groups].tolist()


def group_ids(cfg: TrainConfig, first: int, count: int) -> np.ndarray:
    """The group of global samples first .. first + count - 1."""
    return (np.arange(first, first + count) // cfg.sample_group_size).astype(np.int64)


def _group_prompts(cfg: TrainConfig, num_prompts: int, epoch: int, world_size: int) -> np.ndarray:
    """One prompt per group; drawn without replacement while the prompt list lasts."""
    num_groups = samples_per_epoch(cfg, world_size) // cfg.sample_group_size
    rng = np.random.default_rng([cfg.seed, epoch, 11])
    rounds = -(-num_groups // num_prompts)
    order = np.concatenate([rng.permutation(num_prompts) for _ in range(rounds)])
    return order[:num_groups]
