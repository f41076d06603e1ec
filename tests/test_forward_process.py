"""DiffusionNFT and AWM losses, checked by hand computation on toys (no pipelines)."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from trainer.algorithms import build_algorithm
from trainer.algorithms.forward_losses import nft_loss, optimality_probability
from trainer.algorithms.forward_process import Pass, stratified_steps
from trainer.config import TrainConfig
from trainer.families.sd import StableDiffusionFamily
from trainer.families.sd3 import StableDiffusion3Family

CPU = torch.device("cpu")
SHAPE = (3, 2, 2)


def config(algorithm: str, **keys) -> TrainConfig:
    return TrainConfig(
        pretrained_model="toy",
        prompts=["a"],
        rewards=[{"url": "http://127.0.0.1:1", "scorer": "toy"}],
        train_algorithm=algorithm,
        **keys,
    )


def flow_family(num_steps: int = 10) -> StableDiffusion3Family:
    family = StableDiffusion3Family(
        SimpleNamespace(scheduler=FlowMatchEulerDiscreteScheduler()), CPU, torch.float32
    )
    family.pipeline.scheduler.set_timesteps(num_steps)
    return family


def ddpm_family(kind: str, t: int, sigma: float) -> StableDiffusionFamily:
    """A DDIM family whose alpha_cumprod at `t` has the SNR of flow sigma `sigma`."""
    scheduler = DDIMScheduler(prediction_type=kind, set_alpha_to_one=False)
    scheduler.alphas_cumprod[t] = (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma**2)
    return StableDiffusionFamily(SimpleNamespace(scheduler=scheduler), CPU, torch.float32)


def toy_x0(theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A toy denoiser: the predicted clean latent from the flow-scaled input y."""
    return theta[0] * y + theta[1]


def prediction(kind: str, x0_hat, x_t, sigma: float, abar: float | None) -> torch.Tensor:
    """The toy's x0 prediction written in each family's prediction space."""
    if kind == "flow":
        return (x_t - x0_hat) / sigma
    eps = (x_t - abar**0.5 * x0_hat) / (1 - abar) ** 0.5
    return eps if kind == "epsilon" else abar**0.5 * eps - (1 - abar) ** 0.5 * x0_hat


def one_pass(kind: str, algorithm: str, thetas: dict[str, torch.Tensor], adv: torch.Tensor):
    """Loss and gradient of the toy under one family's form, at one shared noise level."""
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, *SHAPE, generator=gen)
    flow = flow_family()
    t_flow = flow.pipeline.scheduler.timesteps[3].repeat(4)
    sigma = float(flow.noise_level(t_flow, x0)[0])
    y = (1 - sigma) * x0 + sigma * eps  # the flow-scaled noisy latent
    if kind == "flow":
        family, t, x_t, abar = flow, t_flow, y, None
    else:
        family = ddpm_family(kind, 500, sigma)
        t = torch.full((4,), 500)
        abar = float(family.pipeline.scheduler.alphas_cumprod[500])
        x_t = family.forward_noise(x0, eps, t)
        torch.testing.assert_close(x_t, y / ((1 - sigma) ** 2 + sigma**2) ** 0.5)
    theta = thetas["theta"].clone().requires_grad_(True)
    cfg = config(algorithm, train_kl_coef=0.1, train_nft_beta=0.7)
    algo = build_algorithm(cfg, [("theta", theta)])
    anchors = {
        name: prediction(kind, toy_x0(thetas[src], y), x_t, sigma, abar)
        for name, src in (("old", "old"), ("sampler", "old"), ("ema", "ema"), ("ref", "ref"))
    }
    p = Pass(torch.arange(4), torch.zeros(4), t, x0, x_t, family.noise_level(t, x0), {})
    pred = prediction(kind, toy_x0(theta, y), x_t, sigma, abar)
    loss, _ = algo.pass_loss(family, pred, anchors, p, adv)
    loss.backward()
    return loss.detach(), theta.grad


THETAS = {
    "theta": torch.tensor([0.3, 0.1]),
    "old": torch.tensor([0.25, 0.05]),
    "ema": torch.tensor([0.2, 0.0]),
    "ref": torch.tensor([0.1, -0.1]),
}


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_epsilon_v_and_flow_forms_give_the_same_loss_and_gradient(algorithm):
    adv = torch.tensor([1.5, -0.5, 3.0, -7.0])
    loss, grad = one_pass("flow", algorithm, THETAS, adv)
    assert grad.abs().sum() > 0
    for kind in ("epsilon", "v_prediction"):
        loss_k, grad_k = one_pass(kind, algorithm, THETAS, adv)
        torch.testing.assert_close(loss_k, loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_k, grad, rtol=1e-4, atol=1e-6)


def _nft_at_old(adv: torch.Tensor, beta: float = 0.5):
    """NFT's loss gradient w.r.t. the prediction, at theta = theta_old (flow family)."""
    family = flow_family()
    gen = torch.Generator().manual_seed(1)
    x0, eps, v = torch.randn(3, len(adv), *SHAPE, generator=gen)
    t = family.pipeline.scheduler.timesteps[2].repeat(len(adv))
    x_t = family.forward_noise(x0, eps, t)
    pred = v.clone().requires_grad_(True)
    pos = (1 - beta) * v + beta * pred
    neg = (1 + beta) * v - beta * pred
    loss = nft_loss(
        family.predicted_x0(pos, t, x_t),
        family.predicted_x0(neg, t, x_t),
        x0,
        optimality_probability(adv, 5.0),
        beta,
        5.0,
    ).sum()
    (grad,) = torch.autograd.grad(loss, pred)
    return family, x0, x_t, t, v, grad


def test_nft_gradient_at_the_old_policy_is_the_advantage_weighted_denoising_gradient():
    adv = torch.tensor([2.0, -1.0, 9.0, 0.5])
    family, x0, x_t, t, v, grad = _nft_at_old(adv)
    # By hand: x0(v) = x_t - sigma v, e = x0(v) - x0, w = mean |e| (held fixed);
    # d/dv [mean(e^2) / w] = -2 sigma e / (w N), times clip(A, -5, 5).
    sigma = family.noise_level(t, x0)
    e = (x_t - sigma * v) - x0
    n = e[0].numel()
    w = e.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = adv.clamp(-5, 5).reshape(-1, 1, 1, 1) * (-2 * sigma * e / (w * n))
    torch.testing.assert_close(grad, expected.float(), rtol=1e-4, atol=1e-7)


def test_nft_with_all_r_one_half_has_no_policy_gradient_at_the_old_policy():
    *_, grad = _nft_at_old(torch.zeros(4))
    *_, pulled = _nft_at_old(torch.ones(4))
    assert grad.abs().max() < 1e-5 * pulled.abs().max()  # float32 rounding only


def test_nft_step_follows_the_sign_of_the_advantage():
    """A small step along -grad lowers the denoising error of a positive sample, raises a
    negative one's."""
    adv = torch.tensor([1.0, -1.0])
    family, x0, x_t, t, v, grad = _nft_at_old(adv)
    before = ((family.predicted_x0(v, t, x_t) - x0) ** 2).mean(dim=(1, 2, 3))
    after = ((family.predicted_x0(v - 1e-3 * grad, t, x_t) - x0) ** 2).mean(dim=(1, 2, 3))
    assert after[0] < before[0] and after[1] > before[1]


def test_awm_gradient_at_the_sampling_weights_is_the_advantage_weighted_denoising_gradient():
    adv = torch.tensor([2.0, -1.0, 9.0, 0.5])
    cfg = config("awm", train_awm_weight_power=None, train_awm_ema_kl_coef=0.0)
    family = flow_family()
    gen = torch.Generator().manual_seed(2)
    x0, eps, v = torch.randn(3, 4, *SHAPE, generator=gen)
    t = family.pipeline.scheduler.timesteps[4].repeat(4)
    x_t = family.forward_noise(x0, eps, t)
    pred = v.clone().requires_grad_(True)
    p = Pass(torch.arange(4), torch.zeros(4), t, x0, x_t, family.noise_level(t, x0), {})
    algo = build_algorithm(cfg, [("v", pred)])
    loss, figures = algo.pass_loss(family, pred, {"sampler": v}, p, adv)
    (grad,) = torch.autograd.grad(loss, pred)
    # By hand: l = mean (v - (eps - x0))^2, loss = -mean(A/5 x -l) at ratio 1.
    a = (adv.clamp(-5, 5) / 5).reshape(-1, 1, 1, 1)
    expected = a * 2 * (v - (eps - x0)) / (v[0].numel() * 4)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)
    assert figures["ratio_mean"] == 1.0


def test_stratified_steps_cover_every_stratum():
    steps = stratified_steps(50, kept=9, k=3, generator=torch.Generator().manual_seed(0))
    assert steps.shape == (50, 3)
    for j, (lo, hi) in enumerate([(0, 3), (3, 6), (6, 9)]):
        assert ((steps[:, j] >= lo) & (steps[:, j] < hi)).all()
    every = stratified_steps(5, kept=4, k=4, generator=torch.Generator().manual_seed(0))
    assert (every == torch.arange(4)).all()


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_one_prompt_toy_reaches_the_known_optimum(algorithm):
    """Clean samples x0 ~ N(theta, I), drawn exactly (what the flow ODE of the exact denoiser
    of N(theta, I) gives); reward -||x0 - g||^2; the best theta is g."""
    torch.manual_seed(0)
    goal = torch.tensor([1.5, -1.0, 0.5])
    family = flow_family(num_steps=10)
    timesteps = family.pipeline.scheduler.timesteps
    theta = torch.zeros(3, requires_grad=True)
    cfg = config(algorithm, train_kl_coef=0.0)
    algo = build_algorithm(cfg, [("theta", theta)])
    opt = torch.optim.Adam([theta], lr=0.05)

    def velocity(mean: torch.Tensor, x_t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        m = mean.reshape(1, 3, 1, 1)
        x0_hat = m + (1 - s) * (x_t - (1 - s) * m) / ((1 - s) ** 2 + s**2)
        return (x_t - x0_hat) / s

    for _ in range(150):
        sampler = algo.old.swapped_in() if algo.name == "nft" else torch.no_grad()
        with sampler:
            x0 = theta.detach().reshape(1, 3, 1, 1) + torch.randn(16, 3, 1, 1)
        reward = -((x0 - goal.reshape(1, 3, 1, 1)) ** 2).sum(dim=(1, 2, 3))
        adv = (reward - reward.mean()) / (reward.std() + 1e-4)
        idx = torch.randint(0, len(timesteps) - 1, (16,))
        t = timesteps[idx]
        x_t = family.forward_noise(x0, torch.randn_like(x0), t)
        s = family.noise_level(t, x0).float()
        with algo.old.swapped_in():
            old = velocity(theta.detach().clone(), x_t, s)
        p = Pass(torch.arange(16), torch.zeros(16), t, x0, x_t, s, {})
        anchors = {"old": old, "sampler": velocity(theta.detach(), x_t, s), "ema": old}
        loss, _ = algo.pass_loss(family, velocity(theta, x_t, s), anchors, p, adv)
        opt.zero_grad()
        loss.backward()
        opt.step()
        algo.old.update(1)
    assert (theta.detach() - goal).abs().max() < 0.25, theta
