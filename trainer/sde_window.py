"""Which steps of a chain are stochastic (and trained): Flow-GRPO-Fast's and MixGRPO's window.

Outside the window every step is the family's deterministic step, so the
window's first latent is a fixed function of the initial noise and its last
one fixes the image: a trajectory needs only the window's steps, and PPO
trains exactly them. Fewer trained steps per sample is the saving.
"""

from __future__ import annotations

from trainer.config import TrainConfig
from trainer.sampling import sample_seed


def sde_window(cfg: TrainConfig, epoch: int, rank: int, batch: int) -> range:
    """The stochastic steps of sampling batch `batch` of `rank` in `epoch`."""
    size = cfg.sample_sde_window_size
    if not size:
        return range(cfg.sample_num_steps)
    lo, hi = cfg.sample_sde_window_range or (0, cfg.sample_num_steps)
    positions = hi - lo - size + 1
    if cfg.sample_sde_window_shift_every:
        offset = (epoch // cfg.sample_sde_window_shift_every) % positions
    else:  # its own stream: the same seed and place give the same window on resume
        offset = sample_seed(cfg.seed, epoch, rank, batch, 2**31 + 1) % positions
    return range(lo + offset, lo + offset + size)
