"""EMA of the trained weights: the average by hand, swapping, and a checkpoint round trip."""

import pytest
import torch

from tests.test_checkpoint_state import _Module, _save
from trainer.checkpoint import load_checkpoint
from trainer.ema import EMA


def test_average_by_hand_and_swap_restores_live_weights():
    w = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([("w", w)], decay=0.75)
    with torch.no_grad():
        w.copy_(torch.tensor([4.0, 8.0]))
    ema.update()  # 0.75 * 0 + 0.25 * [4, 8]
    with torch.no_grad():
        w.copy_(torch.tensor([0.0, 4.0]))
    ema.update()  # 0.75 * [1, 2] + 0.25 * [0, 4]
    torch.testing.assert_close(ema.shadow["w"], torch.tensor([0.75, 2.5]))
    with ema.swapped_in():
        torch.testing.assert_close(w.detach(), torch.tensor([0.75, 2.5]))
    torch.testing.assert_close(w.detach(), torch.tensor([0.0, 4.0]))


def test_decay_outside_the_open_interval_is_refused():
    with pytest.raises(ValueError, match="ema_decay"):
        EMA([("w", torch.nn.Parameter(torch.zeros(1)))], decay=1.0)


def test_checkpoint_keeps_the_average_for_resume(tmp_path):
    module = _Module()
    ema = EMA(list(module.named_parameters()), decay=0.5)
    with torch.no_grad():
        module.w.mul_(3.0)
    ema.update()  # shadow 2.0
    opt = torch.optim.AdamW(module.parameters())
    ckpt = _save(tmp_path, module, opt, ema=ema)
    torch.testing.assert_close(module.w.detach(), torch.full((3,), 3.0))  # live weights back
    fresh = EMA(list(module.named_parameters()), decay=0.5)
    load_checkpoint(ckpt, module, opt, ema=fresh)
    torch.testing.assert_close(fresh.shadow["w"], torch.full((3,), 2.0))
    plain = _save(tmp_path / "plain", module, opt)
    with pytest.raises(ValueError, match="without ema_decay"):
        load_checkpoint(plain, module, opt, ema=fresh)
