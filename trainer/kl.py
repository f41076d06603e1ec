"""KL from the trained policy to the reference model, per denoising step, in closed form.

Both step distributions are Gaussians with the same std (it depends on the
timestep alone), so KL(current || reference) = ||mu - mu_ref||^2 / (2 sigma^2),
averaged over latent dimensions as the log-prob is. With LoRA the reference is
the base UNet with the adapters switched off, so it costs no second copy.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch


def gaussian_kl_same_std(
    mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Per-sample KL of two Gaussians sharing `std`, averaged over latent dimensions."""
    kl = (mean - mean_ref) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


class ReferenceModel:
    """The model the KL term anchors to: the base UNet (LoRA) or a frozen copy (full FT)."""

    def __init__(self, unet: torch.nn.Module, use_lora: bool, keep_on_cpu: bool = False) -> None:
        """`unet` is the unwrapped, trainable UNet, before any update."""
        self._unet = unet
        self._frozen: torch.nn.Module | None = None
        if not use_lora:
            frozen = copy.deepcopy(unet).requires_grad_(False).eval()
            self._frozen = frozen.to("cpu") if keep_on_cpu else frozen

    @property
    def device(self) -> torch.device:
        module = self._frozen if self._frozen is not None else self._unet
        return next(module.parameters()).device

    @contextlib.contextmanager
    def model(self) -> Iterator[torch.nn.Module]:
        """A module that predicts as the reference does, for the duration of the block."""
        if self._frozen is not None:
            yield self._frozen
            return
        self._unet.disable_adapters()
        try:
            yield self._unet
        finally:
            self._unet.enable_adapters()
