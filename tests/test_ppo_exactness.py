"""The PPO ratio is exactly what PPO assumes before any update, in every precision.

Sampling runs the UNet on 2 x sample_batch_size rows and PPO re-scores on
2 x train_batch_size x timesteps_per_pass rows; the sample batch differs from
the train batch here on purpose. Weights stay unchanged (lr 0), so every
step's log ratio must be 0 up to the stated tolerance.
"""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from trainer.config import TrainConfig
from trainer.families import load_family
from trainer.ppo import DRIFT_TOLERANCE, FP32_CLIP_SHARE, ppo_update
from trainer.sampling import sample_trajectories
from trainer.train import prepare_trainable_unet

STEPS = 8
TOLERANCE = {"no": 1e-6, "bf16": 1e-5, "fp16": 1e-5}
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _config(model, mixed_precision: str, **overrides) -> TrainConfig:
    base = dict(
        pretrained_model=str(model),
        train_algorithm="ppo",
        prompts=["a"],
        rewards=[{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
        mixed_precision=mixed_precision,
        resolution=32,
        sample_num_steps=STEPS,
        sample_guidance_scale=5.0,
        sample_batch_size=6,
        sample_num_batches_per_epoch=1,
        train_batch_size=3,
        train_timesteps_per_pass=4,  # 2 x 3 x 4 = 24 rows in training, 12 in sampling
        train_recompute_old_log_probs="never",
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state; each precision here needs its own."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


class _Setup:
    """A family, its trainable UNet under accelerate with lr 0, and one sampled batch."""

    def __init__(self, model, cfg: TrainConfig, wrap=None) -> None:
        self.cfg = cfg
        self.accelerator = Accelerator(cpu=True, mixed_precision=cfg.mixed_precision)
        self.family = load_family(
            str(model), None, self.accelerator.device, DTYPES[cfg.mixed_precision]
        )
        unet = prepare_trainable_unet(cfg, self.family, self.accelerator)
        if wrap is not None:
            unet = wrap(unet)
        params = [p for p in unet.parameters() if p.requires_grad]
        self.unet, self.optimizer = self.accelerator.prepare(
            unet, torch.optim.AdamW(params, lr=0.0)
        )
        self.uncond = self.family.encode_unconditional(32)
        prompts = ["a red circle", "a blue square", "a cat", "a dog", "x", "y"]
        with self.accelerator.autocast():
            self.trajs = sample_trajectories(
                self.family,
                self.unet,
                prompts,
                torch.arange(6),
                seeds=[11, 12, 13, 14, 15, 16],
                num_steps=STEPS,
                guidance_scale=cfg.sample_guidance_scale,
                eta=1.0,
                resolution=32,
                uncond=self.uncond,
            )

    def update(self, **overrides) -> dict[str, float]:
        cfg = self.cfg.model_copy(update=overrides)
        adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
        gen = torch.Generator().manual_seed(0)
        args = (self.family, self.unet, self.optimizer, self.trajs, adv, cfg, gen, self.uncond)
        return ppo_update(self.accelerator, *args)


@pytest.mark.parametrize(
    ("mixed_precision", "use_lora"),
    [("no", True), ("no", False), ("bf16", True), ("bf16", False), ("fp16", True)],
)
def test_ratio_is_one_before_any_update(tiny_sd, mixed_precision, use_lora):
    setup = _Setup(tiny_sd, _config(tiny_sd, mixed_precision, use_lora=use_lora))
    assert setup.trajs.latents.dtype == torch.float32  # stored exactly as log-probbed
    stats = setup.update(train_num_inner_epochs=2)
    worst = stats["log_ratio_abs_max"]
    print(f"\n{mixed_precision} lora={use_lora}: max |log ratio| over every step {worst:.1e}")
    assert worst <= TOLERANCE[mixed_precision]
    assert stats["clipfrac"] == 0.0


class _ShapeDependentUNet(torch.nn.Module):
    """Rounds differently for one batch shape, as reduced-precision GPU kernels can."""

    def __init__(
        self, inner: torch.nn.Module, rows: int, below_t: int | None = None, scale: float = 1e-3
    ) -> None:
        super().__init__()
        self.inner = inner
        self.rows = rows
        self.below_t = below_t  # perturb only timesteps below this (None: all)
        self.scale = scale
        self.calls = 0

    def forward(self, x, t, **kwargs):
        self.calls += 1
        out = self.inner(x, t, **kwargs)
        hit = self.below_t is None or bool((t < self.below_t).all())
        if x.shape[0] == self.rows and hit:
            return (out[0] * (1 + self.scale),) + tuple(out[1:])
        return out


@pytest.mark.parametrize("mode", ["never", "auto", "always"])
def test_old_log_probs_recomputed_where_kernels_differ_by_batch_shape(tiny_sd, mode):
    sampling_rows = 2 * 6  # CFG doubles the sample batch
    setup = _Setup(
        tiny_sd,
        _config(tiny_sd, "no"),
        wrap=lambda unet: _ShapeDependentUNet(unet, sampling_rows),
    )
    stats = setup.update(train_recompute_old_log_probs=mode)
    if mode == "never":
        assert stats["log_ratio_abs_max"] > 1e-4  # the kernel difference shows as a ratio
        assert "old_log_prob_drift" not in stats
    else:
        assert stats["log_ratio_abs_max"] <= TOLERANCE["no"]
        assert stats["old_log_prob_drift"] > 1e-4


def test_auto_catches_a_drift_confined_to_the_last_step(tiny_sd):
    """Rounding differences matter most where sigma is smallest; the probe looks there."""
    last_step_only = 1000 // STEPS  # DDIM's timesteps are 1000 / STEPS apart
    setup = _Setup(
        tiny_sd,
        _config(tiny_sd, "no", train_timesteps_per_pass=1),  # 6 rows per training pass
        # The last step's mean hardly depends on an epsilon prediction: perturb it more.
        wrap=lambda unet: _ShapeDependentUNet(unet, 2 * 6, below_t=last_step_only, scale=0.1),
    )
    assert int(setup.trajs.timesteps[0, -1]) < last_step_only <= int(setup.trajs.timesteps[0, -2])
    never = setup.update(train_recompute_old_log_probs="never")
    assert never["log_ratio_abs_max"] > 1e-4
    auto = setup.update(train_recompute_old_log_probs="auto")
    assert auto["old_log_prob_drift"] > 1e-4
    assert auto["log_ratio_abs_max"] <= TOLERANCE["no"]


def test_auto_recomputes_nothing_when_kernels_agree(tiny_sd):
    """`auto` costs one probe pass, not a second forward over the epoch, where shapes agree."""
    wrapped: list[_ShapeDependentUNet] = []

    def wrap(unet):
        wrapped.append(_ShapeDependentUNet(unet, rows=-1))  # never perturbs
        return wrapped[0]

    setup = _Setup(tiny_sd, _config(tiny_sd, "no"), wrap=wrap)
    counter = wrapped[0]
    passes = (6 // 3) * (STEPS // 4)  # train batches x passes per batch
    for mode, extra in (("never", 0), ("auto", 1), ("always", passes)):
        counter.calls = 0
        stats = setup.update(train_recompute_old_log_probs=mode)
        assert counter.calls == passes + extra, mode
        assert stats["log_ratio_abs_max"] <= TOLERANCE["no"]
    assert stats["old_log_prob_drift"] <= DRIFT_TOLERANCE


def _offset_update(setup: _Setup, offset: float, **overrides) -> tuple[dict[str, float], int]:
    """Update with every stored log-prob moved by `offset` (a drift of known size);
    returns the stats and the UNet passes it took."""
    counter = setup.unet.module if hasattr(setup.unet, "module") else setup.unet
    stored = setup.trajs.log_probs
    setup.trajs.log_probs = stored + offset
    counter.calls = 0
    try:
        stats = setup.update(train_recompute_old_log_probs="auto", **overrides)
    finally:
        setup.trajs.log_probs = stored
    return stats, counter.calls


@pytest.mark.parametrize(
    ("mixed_precision", "clip_range", "recompute"),
    [
        ("no", 1e-4, False),  # 5e-6 is a twentieth of the clip range: PPO cannot notice it
        ("no", 2e-5, True),  # the same drift is a quarter of this clip range
        ("bf16", 1e-4, True),  # reduced precision stays exact whatever the clip range
    ],
)
def test_auto_recomputes_what_ppo_can_notice(tiny_sd, mixed_precision, clip_range, recompute):
    """`auto` scales its decision to the clip range in float32 and stays exact in bf16."""
    cfg = _config(tiny_sd, mixed_precision, train_clip_range=clip_range)
    setup = _Setup(tiny_sd, cfg, wrap=lambda unet: _ShapeDependentUNet(unet, rows=-1))
    passes = (6 // 3) * (STEPS // 4)
    stats, calls = _offset_update(setup, 5e-6)
    assert 2e-6 < stats["old_log_prob_drift"] < 2e-5
    assert stats["old_log_prob_recomputed"] == float(recompute)
    if recompute:  # probe + recompute + training; the ratio is exact again
        assert calls == 1 + 2 * passes
        assert stats["log_ratio_abs_max"] <= TOLERANCE[mixed_precision]
    else:  # the probe alone; the ratio keeps the harmless offset
        assert calls == 1 + passes
        assert 2e-6 < stats["log_ratio_abs_max"] < FP32_CLIP_SHARE * clip_range
