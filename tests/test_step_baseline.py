"""Per-step baselines (`train_step_baseline`): advantages, predicted x0, sampling, PPO."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from pydantic import ValidationError

from trainer.advantages import group_advantages
from trainer.config import TrainConfig
from trainer.families import load_family
from trainer.ppo import ppo_update
from trainer.sampling import sample_trajectories
from trainer.step_baseline import baseline_figures, step_advantages


def config(**overrides) -> TrainConfig:
    base = dict(
        pretrained_model="x",
        train_algorithm="ppo",
        prompts=["p"],
        rewards=[{"url": "http://x", "scorer": "jpeg_compressibility"}],
        sample_group_size=2,
        sample_batch_size=4,
        train_batch_size=2,
        group_advantage_std="batch",
    )
    return TrainConfig(**{**base, **overrides})


def test_step_advantages_by_hand() -> None:
    rewards = np.array([1.0, 0.0, 1.0, 0.0])
    values = np.array([[0.5, 1.0], [0.5, 0.0], [0.2, 0.9], [0.2, 0.1]])
    # r - V: [[.5, 0], [-.5, 0], [.8, .1], [-.2, -.1]]; centred per group and step, / batch std .5
    want = [[1.0, 0.0], [-1.0, 0.0], [1.0, 0.2], [-1.0, -0.2]]
    got = step_advantages(config(), rewards, values, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("std_over", ["group", "batch"])
def test_constant_values_give_the_plain_group_advantages(std_over: str) -> None:
    rng = np.random.default_rng(0)
    rewards, groups = rng.random(12), np.repeat(np.arange(3), 4)
    values = np.tile(rng.random(5), (12, 1))  # one value per step, the same for every sample
    got = step_advantages(config(group_advantage_std=std_over), rewards, values, groups)
    plain = group_advantages(rewards, groups, std_over)
    for t in range(5):
        np.testing.assert_allclose(got[:, t], plain, atol=1e-5)


def test_missing_rewards_and_values() -> None:
    rewards = np.array([1.0, np.nan, 0.0, 0.5])
    values = np.array([[0.2, np.nan], [0.1, 0.1], [0.4, 0.3], [0.0, 0.5]])
    got = step_advantages(config(), rewards, values, np.zeros(4, dtype=int))
    assert (got[1] == 0).all()  # no reward: no gradient
    # the unknown value of sample 0 at step 1 takes that step's mean over known ones (0.3)
    gains = np.array([1.0 - 0.3, 0.0 - 0.3, 0.5 - 0.5])
    np.testing.assert_allclose(got[[0, 2, 3], 1], (gains - gains.mean()) / 0.5 / 0.8165, rtol=1e-3)


def test_baseline_figures_say_how_much_the_steps_knew() -> None:
    rewards = np.array([0.1, 0.9, 0.4, 0.7])
    values = np.stack([np.full(4, 0.5), rewards], axis=1)  # knows nothing, then everything
    got = baseline_figures(rewards, values)
    assert got["step_baseline_r2_first"] == 0.0
    assert got["step_baseline_r2_last"] == pytest.approx(1.0)


def test_config_rejects_human_ratings_and_per_prompt_tracking() -> None:
    with pytest.raises(ValidationError, match="rated by people"):
        config(train_step_baseline=True, rewards=[{"url": "http://x", "scorer": "human"}])
    with pytest.raises(ValidationError, match="sample_group_size > 1"):
        config(train_step_baseline=True, sample_group_size=1)
    with pytest.raises(ValidationError, match="reward_aggregation"):
        config(train_step_baseline=True, reward_aggregation="advantages")
    assert config(train_step_baseline=True, sample_group_size=1, per_prompt_stat_tracking=False)


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sd_v"])
def test_predicted_x0_inverts_the_forward_process(fixture: str, request) -> None:
    model = request.getfixturevalue(fixture)
    family = load_family(str(model), None, torch.device("cpu"), torch.float32)
    family.set_timesteps(8, (4, 4, 4))
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 4, 4, generator=gen), torch.randn(3, 4, 4, 4, generator=gen)
    t = family.pipeline.scheduler.timesteps[[0, 3, 7]]
    a = family.pipeline.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    if family.pipeline.scheduler.config.prediction_type == "v_prediction":
        output = a.sqrt() * noise - (1 - a).sqrt() * x0
    else:
        output = noise
    torch.testing.assert_close(family.predicted_x0(output, t, xt), x0, rtol=1e-4, atol=1e-4)


def test_flow_predicted_x0_inverts_the_interpolation(tmp_path) -> None:
    from trainer.random_flow_pipeline import build_random_sd3

    family = load_family(str(build_random_sd3(tmp_path)), None, torch.device("cpu"), torch.float32)
    family.set_timesteps(6, family.latent_shape(32))
    sched = family.pipeline.scheduler
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 4, 4, generator=gen), torch.randn(2, 4, 4, 4, generator=gen)
    sigma = sched.sigmas[[1, 4]].reshape(-1, 1, 1, 1)
    xt = (1 - sigma) * x0 + sigma * noise
    got = family.predicted_x0(noise - x0, sched.timesteps[[1, 4]], xt)
    torch.testing.assert_close(got, x0, rtol=1e-4, atol=1e-4)


def test_sampling_records_x0_images_without_changing_the_chain(tiny_sd) -> None:
    family = load_family(str(tiny_sd), None, torch.device("cpu"), torch.float32)
    args = (family, family.unet, ["a", "b"], torch.arange(2), [5, 6])
    kw = dict(num_steps=6, guidance_scale=3.0, eta=1.0, resolution=32, window=range(1, 5))
    plain = sample_trajectories(*args, **kw)
    recorded = sample_trajectories(*args, **kw, predict_x0_images=True)
    assert plain.x0_images is None
    assert recorded.x0_images.shape == (2, 4, 32, 32, 3) and recorded.x0_images.dtype == np.uint8
    np.testing.assert_array_equal(recorded.images, plain.images)
    torch.testing.assert_close(recorded.latents, plain.latents)
    assert recorded.select(torch.tensor([1])).x0_images.shape == (1, 4, 32, 32, 3)


def test_ppo_with_constant_step_advantages_is_the_plain_update(tiny_sd) -> None:
    family = load_family(str(tiny_sd), None, torch.device("cpu"), torch.float32)
    unet = family.unet
    trajs = sample_trajectories(
        family, unet, ["a", "b", "c", "d"], torch.arange(4), [1, 2, 3, 4],
        num_steps=4, guidance_scale=3.0, eta=1.0, resolution=32,
    )  # fmt: skip
    adv = torch.tensor([1.0, -0.5, 0.3, -0.8])
    uncond = family.encode_unconditional(32)
    initial = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.requires_grad_(True)
    accelerator = Accelerator(cpu=True)
    cfg = config(sample_num_steps=4, sample_guidance_scale=3.0, train_max_grad_norm=1e9)

    def update(advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        unet.load_state_dict(initial)
        opt = accelerator.prepare(torch.optim.SGD(unet.parameters(), lr=1.0))
        gen = torch.Generator().manual_seed(0)
        ppo_update(accelerator, family, unet, opt, trajs, advantages, cfg, gen, uncond)
        return {k: v - initial[k] for k, v in unet.state_dict().items()}

    plain = update(adv)
    per_step = update(adv[:, None].repeat(1, 4))
    only_first = update(torch.cat([adv[:, None], torch.zeros(4, 3)], dim=1))
    unet.requires_grad_(False)
    assert max(v.abs().max().item() for v in plain.values()) > 0
    for k in plain:
        torch.testing.assert_close(per_step[k], plain[k], rtol=1e-4, atol=1e-7)
    assert any(not torch.allclose(only_first[k], plain[k], atol=1e-7) for k in plain)
