"""A checkpoint holds what an exact resume needs: every rank's RNG and fp16's loss scale."""

import random

import numpy as np
import torch

from trainer.checkpoint import ResumeState, load_checkpoint, save_checkpoint
from trainer.rng_state import capture_rng_state, restore_rng_state


class _Pipeline:
    """save_checkpoint only needs the pipeline class for LoRA; full weights go via the module."""


class _Module(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def save_pretrained(self, path, safe_serialization=True) -> None:
        path.mkdir(parents=True, exist_ok=True)


def _draws() -> tuple[float, float, float]:
    return torch.rand(1).item(), float(np.random.rand()), random.random()


def _state() -> ResumeState:
    return ResumeState(epoch=1, global_step=4, stat_tracker={}, family="sd", use_lora=False)


def _save(directory, module: torch.nn.Module, opt: torch.optim.Optimizer, **extra):
    """A full-weights checkpoint of `module` at epoch 1, with `extra` (rng_states, scaler, ema)."""
    return save_checkpoint(
        directory,
        pipeline_cls=_Pipeline,
        unet=module,
        optimizer=opt,
        state=_state(),
        keep=2,
        **extra,
    )


def test_each_rank_resumes_its_own_random_streams(tmp_path):
    states, expected = [], []
    for seed in (1, 2):  # what rank 0 and rank 1 would hold
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        states.append(capture_rng_state())
        expected.append(_draws())
    module = _Module()
    opt = torch.optim.AdamW(module.parameters())
    ckpt = _save(tmp_path, module, opt, rng_states=states)
    for rank in (1, 0):
        torch.manual_seed(99)
        load_checkpoint(ckpt, module, opt, rank=rank, world_size=2)
        assert _draws() == expected[rank]


def test_fp16_loss_scale_survives_a_resume(tmp_path):
    module = _Module()
    opt = torch.optim.AdamW(module.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale(module.w.sum())  # the scaler's state exists from its first use
    scaler.update(new_scale=37.0)  # as after some overflow-driven backoffs
    ckpt = _save(tmp_path, module, opt, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    state = load_checkpoint(ckpt, module, opt, scaler=fresh)
    assert state.global_step == 4
    assert fresh.get_scale() == 37.0


def test_rng_state_round_trips_in_process():
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    state = capture_rng_state()
    first = _draws()
    _draws()
    restore_rng_state(state)
    assert _draws() == first
