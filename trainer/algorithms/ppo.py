"""PPO over stored denoising trajectories (DDPO, Flow-GRPO): trainer/ppo.py behind the
algorithm interface, unchanged."""

from __future__ import annotations

from trainer.algorithms.base import Algorithm
from trainer.ppo import ppo_update
from trainer.sampling import Trajectories, sample_trajectories


class PPO(Algorithm):
    """Keeps every latent and step log-prob of each chain (`Trajectories`)."""

    name = "ppo"

    def sample(self, *args, **kwargs) -> Trajectories:
        return sample_trajectories(*args, **kwargs)

    def cat(self, parts: list[Trajectories]) -> Trajectories:
        return Trajectories.cat(parts)

    def update(self, *args, **kwargs) -> dict[str, float]:
        return ppo_update(*args, **kwargs)
