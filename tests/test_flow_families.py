"""SD3 and FLUX families on tiny random pipelines: detection, diffusers' sampler, exact ratios."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from trainer.config import TrainConfig
from trainer.families import load_family
from trainer.ppo import ppo_update
from trainer.random_flow_pipeline import build_random_flux, build_random_sd3
from trainer.sampling import sample_trajectories
from trainer.train import prepare_trainable_unet

STEPS = 6
RES = 32
PROMPTS = ["a red circle", "a blue square", "a cat", "a dog"]
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    return build_random_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    return build_random_flux(tmp_path_factory.mktemp("tiny-flux"))


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _noise(family, n: int) -> torch.Tensor:
    shape = family.latent_shape(RES)
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    )


def _ode_chain(family, prompts, noise, guidance):
    """The family's deterministic chain: predict, then the Euler step, every step."""
    family.set_timesteps(STEPS, noise.shape[1:])
    cond = family.encode_prompts(prompts, RES)
    uncond = None
    if family.name == "sd3" and guidance != 1.0:
        u = family.encode_unconditional(RES)
        uncond = {k: v.expand(len(prompts), *v.shape[1:]) for k, v in u.items()}
    x = noise.clone()
    for t in family.pipeline.scheduler.timesteps:
        tb = t.repeat(len(prompts))
        out = family.predict(family.denoiser, family.model_input(x, tb), tb, cond, uncond, guidance)
        x = family.deterministic_step(out.float(), tb, x)
    return x


def test_sd3_is_detected_and_its_ode_chain_is_the_diffusers_sampler(tiny_sd3):
    fam = load_family(str(tiny_sd3), None, torch.device("cpu"), torch.float32)
    assert fam.name == "sd3" and fam.denoiser is fam.pipeline.transformer
    noise = _noise(fam, 2)
    ours = _ode_chain(fam, PROMPTS[:2], noise, guidance=4.5)
    theirs = fam.pipeline(
        PROMPTS[:2],
        negative_prompt="",
        num_inference_steps=STEPS,
        guidance_scale=4.5,
        latents=noise,
        height=RES,
        width=RES,
        output_type="latent",
        max_sequence_length=128,
    ).images
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-4)
    assert (ours - _ode_chain(fam, PROMPTS[:2], noise, guidance=1.0)).abs().max() > 1e-3


def test_flux_is_detected_and_its_ode_chain_is_the_diffusers_sampler(tiny_flux):
    fam = load_family(str(tiny_flux), None, torch.device("cpu"), torch.float32)
    assert fam.name == "flux" and fam.pipeline.scheduler.config.use_dynamic_shifting
    noise = _noise(fam, 2)
    ours = _ode_chain(fam, PROMPTS[:2], noise, guidance=3.5)
    pipe = fam.pipeline
    packed = pipe._pack_latents(noise, 2, *noise.shape[1:])
    theirs = pipe(
        PROMPTS[:2],
        num_inference_steps=STEPS,
        guidance_scale=3.5,
        latents=packed,
        height=RES,
        width=RES,
        output_type="latent",
        max_sequence_length=128,
    ).images
    theirs = pipe._unpack_latents(theirs, RES, RES, fam.vae_scale_factor)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-4)
    # guidance is an input of the one pass (FLUX.1-dev), not a second, unconditional pass
    assert (ours - _ode_chain(fam, PROMPTS[:2], noise, guidance=1.0)).abs().max() > 1e-3


def test_flux_shift_depends_on_the_token_count(tiny_flux):
    fam = load_family(str(tiny_flux), None, torch.device("cpu"), torch.float32)
    fam.set_timesteps(STEPS, fam.latent_shape(32))
    small = fam.pipeline.scheduler.sigmas.clone()
    fam.set_timesteps(STEPS, fam.latent_shape(256))
    large = fam.pipeline.scheduler.sigmas.clone()
    assert small[0] == large[0] == 1.0
    assert bool((large[1:-1] > small[1:-1]).all())  # more tokens, more shift toward noise


class _Setup:
    """A family, its trainable transformer under accelerate with lr 0, one sampled batch."""

    def __init__(self, model, mixed_precision: str, use_lora: bool, window=None, **overrides):
        self.cfg = TrainConfig(
            pretrained_model=str(model),
            train_algorithm="ppo",
            prompts=["a"],
            rewards=[{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
            mixed_precision=mixed_precision,
            use_lora=use_lora,
            resolution=RES,
            sample_num_steps=STEPS,
            sample_eta=0.7,
            sample_guidance_scale=4.5,
            sample_batch_size=4,
            sample_num_batches_per_epoch=1,
            train_batch_size=1,
            train_timesteps_per_pass=3,  # 1 x 3 x 2 = 6 rows in training, 4 x 2 in sampling
            train_recompute_old_log_probs="never",
            **overrides,
        )
        self.accelerator = Accelerator(cpu=True, mixed_precision=mixed_precision)
        self.family = load_family(
            str(model), None, self.accelerator.device, DTYPES[mixed_precision]
        )
        net = prepare_trainable_unet(self.cfg, self.family, self.accelerator)
        params = [p for p in net.parameters() if p.requires_grad]
        self.net, self.optimizer = self.accelerator.prepare(net, torch.optim.AdamW(params, lr=0.0))
        self.uncond = self.family.encode_unconditional(RES)
        with self.accelerator.autocast():
            self.trajs = sample_trajectories(
                self.family,
                self.net,
                PROMPTS,
                torch.arange(4),
                seeds=[11, 12, 13, 14],
                num_steps=STEPS,
                guidance_scale=4.5,
                eta=0.7,
                resolution=RES,
                uncond=self.uncond,
                window=window,
            )

    def update(self) -> dict[str, float]:
        adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
        gen = torch.Generator().manual_seed(0)
        args = (self.family, self.net, self.optimizer, self.trajs, adv, self.cfg, gen, self.uncond)
        return ppo_update(self.accelerator, *args)


@pytest.mark.parametrize("model", ["tiny_sd3", "tiny_flux"])
@pytest.mark.parametrize(
    ("mixed_precision", "use_lora", "tolerance"),
    [("no", True, 1e-6), ("no", False, 1e-6), ("bf16", True, 1e-5)],
)
def test_ratio_is_one_with_unchanged_weights(request, model, mixed_precision, use_lora, tolerance):
    setup = _Setup(request.getfixturevalue(model), mixed_precision, use_lora)
    assert setup.trajs.latents.dtype == torch.float32
    assert setup.trajs.log_probs.shape == (4, STEPS)
    stats = setup.update()
    worst = stats["log_ratio_abs_max"]
    print(f"\n{model} {mixed_precision} lora={use_lora}: max |log ratio| {worst:.1e}")
    assert worst <= tolerance
    assert stats["clipfrac"] == 0.0


def test_window_stores_its_steps_only_and_starts_from_the_ode_prefix(tiny_sd3):
    window = range(2, 4)
    setup = _Setup(tiny_sd3, "no", True, window=window, sample_sde_window_size=2)
    trajs, fam = setup.trajs, setup.family
    assert trajs.latents.shape[1] == 3 and trajs.log_probs.shape == (4, 2)
    schedule = fam.pipeline.scheduler.timesteps
    assert torch.equal(trajs.timesteps[0], schedule[2:4])
    # the window's first latent: two deterministic steps from the same initial noise
    noise = torch.stack(
        [
            torch.randn(fam.latent_shape(RES), generator=torch.Generator().manual_seed(s))
            for s in (11, 12, 13, 14)
        ]
    )
    cond = fam.encode_prompts(PROMPTS, RES)
    uncond = {k: v.expand(4, *v.shape[1:]) for k, v in setup.uncond.items()}
    x = noise
    with torch.no_grad():
        for t in schedule[:2]:
            tb = t.repeat(4)
            out = fam.predict(setup.net, fam.model_input(x, tb), tb, cond, uncond, 4.5)
            x = fam.deterministic_step(out.float(), tb, x)
    torch.testing.assert_close(trajs.latents[:, 0], x)
    stats = setup.update()  # PPO trains exactly the window's two steps, at ratio 1
    assert stats["log_ratio_abs_max"] <= 1e-6


FLUX_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2"]


def test_transformer_lora_on_attention_and_feed_forward_with_rank_and_alpha(tiny_flux):
    setup = _Setup(
        tiny_flux, "no", True, lora_rank=8, lora_alpha=16.0, lora_target_modules=FLUX_TARGETS
    )
    net = setup.accelerator.unwrap_model(setup.net)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in net.named_parameters() if ".lora_A" in n}
    assert any(n.endswith("ff.net.0.proj") for n in adapted)
    assert any(n.endswith("attn.to_out.0") for n in adapted)
    assert not any("norm" in n or "proj_out" in n for n in adapted)
    layer = net.transformer_blocks[0].ff.net[2]
    assert layer.r["default"] == 8 and layer.scaling["default"] == 2.0  # alpha / rank


@pytest.mark.parametrize("model", ["tiny_sd3", "tiny_flux"])
def test_gradient_checkpointing_gives_the_same_update(request, model):
    """Recomputing activations in backward saves memory and must not change one gradient."""
    path = request.getfixturevalue(model)
    updated = []
    for checkpointing in (False, True):
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.manual_seed(0)  # the same LoRA initialisation both times
        setup = _Setup(path, "no", True, gradient_checkpointing=checkpointing)
        setup.optimizer.param_groups[0]["lr"] = 1e-3
        stats = setup.update()
        net = setup.accelerator.unwrap_model(setup.net)
        assert net.is_gradient_checkpointing == checkpointing
        trained = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
        updated.append((trained, stats["loss"]))
    (plain, loss_plain), (ckpt, loss_ckpt) = updated
    assert loss_plain == pytest.approx(loss_ckpt, abs=1e-7)
    moved = max(float(p.abs().max()) for n, p in plain.items() if "lora_B" in n)
    assert moved > 0
    for name, value in plain.items():
        torch.testing.assert_close(ckpt[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "model"),
    [("sd35-medium-grpo-lora.toml", "tiny_sd3"), ("flux1-dev-grpo-lora.toml", "tiny_flux")],
)
def test_every_preset_lora_target_names_modules_of_its_architecture(request, preset, model):
    """The tiny pipelines keep the real module names, so a misspelt target shows here."""
    from pathlib import Path

    from trainer.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / preset)
    fam = load_family(str(request.getfixturevalue(model)), None, torch.device("cpu"), torch.float32)
    names = [n for n, _ in fam.denoiser.named_modules()]
    for target in cfg.lora_target_modules:
        assert any(n.endswith("." + target) for n in names), target


@pytest.mark.parametrize("model", ["tiny_sd3", "tiny_flux"])
def test_an_update_moves_log_probs_the_way_of_the_advantages(request, model):
    """The policy gradient through the flow step has the right sign."""
    from trainer.ppo import recompute_log_prob

    torch.manual_seed(0)
    setup = _Setup(request.getfixturevalue(model), "no", False, train_clip_range=10.0)
    setup.optimizer.param_groups[0]["lr"] = 1e-4

    def log_probs() -> torch.Tensor:
        with torch.no_grad():
            cols = [torch.full((4,), j) for j in range(STEPS)]
            args = (setup.uncond, 4.5, 0.7)
            return torch.stack(
                [recompute_log_prob(setup.family, setup.net, setup.trajs, c, *args) for c in cols]
            )

    before = log_probs()
    setup.update()  # advantages +1, -1, +0.5, -0.5
    change = (log_probs() - before).mean(dim=0)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    assert float((adv * change).sum()) > 0, change
