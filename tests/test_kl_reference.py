"""The KL term to the reference model: closed form, zero at start, grows, pulls back."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tests.test_ppo import _config
from trainer.families import load_family
from trainer.kl import ReferenceModel, gaussian_kl_same_std
from trainer.ppo import ppo_update
from trainer.sampling import sample_trajectories
from trainer.train import prepare_trainable_unet


def test_closed_form_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mean, mean_ref = torch.randn(3, 4, 5, generator=gen), torch.randn(3, 4, 5, generator=gen)
    std = torch.tensor([0.3, 1.0, 2.0]).reshape(3, 1, 1)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std.expand_as(mean)),
        torch.distributions.Normal(mean_ref, std.expand_as(mean)),
    ).mean(dim=(1, 2))
    torch.testing.assert_close(gaussian_kl_same_std(mean, mean_ref, std), expected)
    assert gaussian_kl_same_std(mean, mean, std).abs().max() == 0


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _setup(model, use_lora: bool, **overrides):
    cfg = _config(
        use_lora=use_lora,
        train_kl_coef=1.0,
        train_timesteps_per_pass=8,
        train_batch_size=4,  # one pass per update: the first KL is taken before any step
        # Updates here re-use one sampled batch; recomputing its old log-probs at weights
        # that moved since would be wrong (the trainer samples afresh before each update).
        train_recompute_old_log_probs="never",
        train_learning_rate=1.0 if use_lora else 1e-2,
        **overrides,
    )
    acc = Accelerator(cpu=True)
    family = load_family(str(model), None, acc.device, torch.float32)
    unet = prepare_trainable_unet(cfg, family, acc)
    reference = ReferenceModel(unet, use_lora, keep_on_cpu=not use_lora)
    params = [p for p in unet.parameters() if p.requires_grad]
    unet, opt = acc.prepare(unet, torch.optim.SGD(params, lr=cfg.train_learning_rate))
    uncond = family.encode_unconditional(32)
    trajs = sample_trajectories(
        family,
        unet,
        ["a", "b", "c", "d"],
        torch.arange(4),
        [1, 2, 3, 4],
        8,
        4.0,
        1.0,
        32,
        uncond=uncond,
    )

    def update(adv, **cfg_overrides):
        run_cfg = cfg.model_copy(update=cfg_overrides)
        for group in opt.param_groups:
            group["lr"] = run_cfg.train_learning_rate
        gen = torch.Generator().manual_seed(0)
        args = (family, unet, opt, trajs, torch.tensor(adv), run_cfg, gen, uncond)
        return ppo_update(acc, *args, reference=reference)

    return update


@pytest.mark.parametrize("use_lora", [True, False])
def test_kl_is_zero_at_start_grows_with_updates_and_its_gradient_pulls_back(tiny_sd, use_lora):
    update = _setup(tiny_sd, use_lora)
    # Ratio clip wide open so the reward term moves the weights in a few steps.
    first = update([1.0, -1.0, 1.0, -1.0], train_clip_range=10.0, train_kl_coef=1e-9)
    assert first["kl_to_reference"] < 1e-9  # the first pass runs at the reference weights
    for _ in range(3):
        moved = update([1.0, -1.0, 1.0, -1.0], train_clip_range=10.0, train_kl_coef=1e-9)
    assert moved["kl_to_reference"] > 1e-6
    # Advantages 0: the PPO term has no gradient, only beta x KL acts; it must shrink.
    pulled = update([0.0, 0.0, 0.0, 0.0], train_kl_coef=1.0)
    after = update([0.0, 0.0, 0.0, 0.0], train_kl_coef=1.0)
    assert after["kl_to_reference"] < pulled["kl_to_reference"]


def test_lora_reference_leaves_the_adapters_on(tiny_sd):
    update = _setup(tiny_sd, True)
    update([1.0, -1.0, 1.0, -1.0], train_clip_range=10.0)
    stats = update([1.0, -1.0, 1.0, -1.0], train_clip_range=10.0)
    assert stats["log_ratio_abs_max"] > 0  # training still sees the adapted model
