import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from trainer.ddim_logprob import ddim_step_with_logprob

PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]


def make_scheduler(prediction_type: str, steps: int = 5) -> DDIMScheduler:
    sched = DDIMScheduler(
        num_train_timesteps=10,
        beta_start=0.1,
        beta_end=0.3,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type=prediction_type,
        timestep_spacing="leading",
        steps_offset=1,
    )
    sched.set_timesteps(steps)
    return sched


def closed_form(prediction_type, model_output, x, x_prev, t, sched, eta):
    """Gaussian log-density of x_prev under DDIM's step, in float64 scalar arithmetic."""
    betas = np.linspace(0.1, 0.3, 10)
    alphas = np.cumprod(1 - betas)
    a_t = alphas[t]
    prev = t - 10 // sched.num_inference_steps
    a_p = alphas[prev] if prev >= 0 else alphas[0]
    m, xx = model_output.double().numpy(), x.double().numpy()
    if prediction_type == "epsilon":
        eps = m
        x0 = (xx - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    elif prediction_type == "sample":
        x0 = m
        eps = (xx - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    else:
        x0 = math.sqrt(a_t) * xx - math.sqrt(1 - a_t) * m
        eps = math.sqrt(a_t) * m + math.sqrt(1 - a_t) * xx
    var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
    std = eta * math.sqrt(var)
    mean = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - std**2) * eps
    y = x_prev.double().numpy()
    dens = -((y - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return dens.reshape(dens.shape[0], -1).mean(axis=1)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_log_prob_matches_closed_form(prediction_type, eta):
    torch.manual_seed(0)
    sched = make_scheduler(prediction_type)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x_prev = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for t in (int(sched.timesteps[0]), int(sched.timesteps[-1])):
        _, lp = ddim_step_with_logprob(sched, out, t, x, eta=eta, prev_sample=x_prev)
        expected = closed_form(prediction_type, out, x, x_prev, t, sched, eta)
        np.testing.assert_allclose(
            lp.numpy(), expected, rtol=1e-6, atol=1e-6
        )  # schedule is stored in fp32


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_sampled_step_matches_diffusers_and_rescoring(prediction_type):
    sched = make_scheduler(prediction_type)
    x = torch.randn(3, 4, 8, 8)
    out = torch.randn(3, 4, 8, 8)
    t = int(sched.timesteps[1])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    prev, lp = ddim_step_with_logprob(sched, out, t, x, eta=1.0, generator=gens)
    noise = torch.stack(
        [torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    )
    ref = sched.step(out, t, x, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(prev, ref, rtol=1e-5, atol=1e-5)
    _, lp_again = ddim_step_with_logprob(sched, out, t, x, eta=1.0, prev_sample=prev)
    torch.testing.assert_close(lp, lp_again)


def test_per_sample_timesteps_equal_scalar_steps():
    sched = make_scheduler("epsilon")
    x, out, y = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    ts = torch.tensor([int(sched.timesteps[0]), int(sched.timesteps[2])])
    _, lp = ddim_step_with_logprob(sched, out, ts, x, prev_sample=y)
    for i in range(2):
        _, one = ddim_step_with_logprob(
            sched, out[i : i + 1], int(ts[i]), x[i : i + 1], prev_sample=y[i : i + 1]
        )
        torch.testing.assert_close(lp[i : i + 1], one)


def test_eta_zero_rejected():
    sched = make_scheduler("epsilon")
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(sched, torch.zeros(1, 4, 2, 2), 5, torch.zeros(1, 4, 2, 2), eta=0.0)


def test_zero_variance_final_step_rejected():
    sched = DDIMScheduler(num_train_timesteps=10, set_alpha_to_one=True, beta_schedule="linear")
    sched.set_timesteps(5)
    last = int(sched.timesteps[-1])
    with pytest.raises(ValueError, match="set_alpha_to_one=False"):
        ddim_step_with_logprob(sched, torch.zeros(1, 4, 2, 2), last, torch.zeros(1, 4, 2, 2))
