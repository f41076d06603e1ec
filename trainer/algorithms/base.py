"""The narrow interface between the epoch loop and a training algorithm.

An algorithm says what it samples and keeps per sample (`sample`, `cat`), how it
trains on an epoch's samples and their advantages (`update`, returning the figures
it logs), and what state a resume needs besides the weights (`state_dict`).
The epoch loop in trainer/train.py calls these and never asks which algorithm runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from trainer.config import TrainConfig
from trainer.ema import EMA
from trainer.families.base import DiffusionFamily, PromptEmbeds
from trainer.kl import ReferenceModel

#: The trained parameters by name, as the optimizer and the EMA see them.
NamedParams = list[tuple[str, torch.nn.Parameter]]


class Algorithm(ABC):
    """One way to turn an epoch's samples and advantages into weight updates."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: TrainConfig, trainable: NamedParams) -> None:
        self.cfg = cfg

    @abstractmethod
    def sample(
        self,
        family: DiffusionFamily,
        unet: torch.nn.Module,
        prompts: list[str],
        prompt_ids: torch.Tensor,
        seeds: list[int],
        num_steps: int,
        guidance_scale: float,
        eta: float,
        resolution: int,
        uncond: PromptEmbeds | None = None,
        window: range | None = None,
        predict_x0_images: bool = False,
    ) -> Any:
        """One sampling batch: an object with `prompts`, `prompt_ids`, `images`,
        `x0_images` and `len()`, holding what `update` needs of each sample."""

    @abstractmethod
    def cat(self, parts: list[Any]) -> Any:
        """The epoch's samples from its sampling batches."""

    @abstractmethod
    def update(
        self,
        accelerator,
        family: DiffusionFamily,
        unet: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        samples: Any,
        advantages: torch.Tensor,
        cfg: TrainConfig,
        generator: torch.Generator,
        uncond: PromptEmbeds | None,
        *,
        reference: ReferenceModel | None = None,
        ema: EMA | None = None,
    ) -> dict[str, float]:
        """Train on this process's samples; the figures to log (averaged over ranks)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a resume needs besides weights, optimizer and RNG ({}: nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, the checkpoint has {sorted(state)[:3]}")
