"""Training algorithms behind one interface (`Algorithm`): PPO, DiffusionNFT, AWM.

`train_algorithm` in the config picks one; the epoch loop only calls the interface.
"""

from __future__ import annotations

from trainer.algorithms.awm import AWM
from trainer.algorithms.base import Algorithm, NamedParams
from trainer.algorithms.nft import NFT
from trainer.algorithms.ppo import PPO
from trainer.config import TrainConfig

ALGORITHMS: dict[str, type[Algorithm]] = {a.name: a for a in (PPO, NFT, AWM)}


def build_algorithm(cfg: TrainConfig, trainable: NamedParams) -> Algorithm:
    """The configured algorithm over the trained parameters (its old policy shadows them)."""
    return ALGORITHMS[cfg.train_algorithm](cfg, trainable)


__all__ = ["ALGORITHMS", "Algorithm", "build_algorithm"]
