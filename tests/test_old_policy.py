"""The forward-process old policy: its decay schedule, its checkpoint round trip, and the
error a DDPO checkpoint gives when resumed under the nft default."""

import pytest
import torch

from trainer.algorithms.old_policy import OldPolicy


def policy(rate: float = 0.1, max_decay: float = 0.3) -> tuple[torch.nn.Linear, OldPolicy]:
    layer = torch.nn.Linear(2, 2)
    return layer, OldPolicy(list(layer.named_parameters()), rate, max_decay)


def test_decay_grows_with_optimizer_steps_up_to_its_cap():
    layer, old = policy()
    assert old.update(1) == pytest.approx(0.1)
    assert old.update(1) == pytest.approx(0.2)
    assert old.update(5) == pytest.approx(0.3)  # 0.7 capped


def test_state_round_trips_weights_and_steps():
    layer, old = policy()
    with torch.no_grad():
        layer.weight.add_(1.0)
    old.update(2)
    saved = old.state_dict()
    other_layer, other = policy()
    other.load_state_dict(saved)
    assert other.optimizer_steps == 2
    with other.swapped_in():
        want = other_layer.weight.detach().clone()
    with old.swapped_in():
        assert torch.equal(layer.weight, want)


def test_a_checkpoint_without_an_old_policy_names_the_fix():
    _, old = policy()
    with pytest.raises(ValueError, match='train_algorithm = "ppo"'):
        old.load_state_dict({})
