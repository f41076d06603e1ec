"""Random-weight SD pipelines run through the trainer's own code, and one timed epoch of them.

The pipeline is built on the device and handed to trainer.families.load_family, then
trainer.train's setup_run / sample_epoch / update run as `ddpo train` runs them.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpu_archs import BIGG_TEXT, CLIP_L_TEXT, PUBLISHED_PARAMS, Sizes
from gpu_flow import FLOW_KINDS, build_flow_pipeline
from gpu_measure import (
    NO_CUDA,
    Report,
    allocated_gib,
    check_params,
    param_count,
    peak_gib,
    reset_peak,
    sync,
)

REPO = Path(__file__).resolve().parents[1]
LORA_PRESET = REPO / "configs" / "sd15-aesthetic-lora.toml"
FULL_PRESET = REPO / "configs" / "sd15-aesthetic-full.toml"

# -- random-weight pipelines through the trainer's own loader -----------------------------


def text_encoder_for(config: dict[str, Any], n_tokens: int, max_length: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        **{
            **config,
            # The embedding keeps the real vocabulary size; the byte-level tokenizer uses
            # its first ids, and its two special tokens are the last of them.
            "vocab_size": max(config.get("vocab_size", 0), n_tokens),
            "max_position_embeddings": max_length,
            "bos_token_id": n_tokens - 2,
            "eos_token_id": n_tokens - 1,
            "pad_token_id": n_tokens - 1,
        }
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def build_pipeline(kind: str, sizes: Sizes, device) -> tuple[Any, dict[str, int]]:
    """A random-weight SD 1.5 ("sd15") or SDXL ("sdxl") pipeline, built on `device` in fp32.

    The UNet, VAE and text encoders have the configured sizes (real ones: their
    memory and decode time count); the tokenizer is trainer.random_pipeline's
    byte-level one (no vocabulary download) padded to the text encoder's length.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from trainer.random_pipeline import _scheduler, _tokenizer

    if kind in FLOW_KINDS:
        return build_flow_pipeline(
            kind, sizes.flow_tiny, device, CLIP_L_TEXT, BIGG_TEXT, text_encoder_for
        )
    sdxl = kind == "sdxl"
    unet_cfg, vae_cfg = (sizes.sdxl_unet, sizes.sdxl_vae) if sdxl else (sizes.sd_unet, sizes.sd_vae)
    text_cfg = sizes.sdxl_text if sdxl else sizes.sd_text
    max_length = int(text_cfg["max_position_embeddings"])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tok, n_tokens = _tokenizer(Path(tmp) / "tok", max_length)
        tok2, _ = _tokenizer(Path(tmp) / "tok2", max_length)
    # Built on the device: random init of 1-3.5 billion parameters is seconds there.
    with torch.device(device):
        parts: dict[str, Any] = {
            "unet": UNet2DConditionModel(**unet_cfg),
            "vae": AutoencoderKL(**vae_cfg),
            "text_encoder": text_encoder_for(text_cfg, n_tokens, max_length, projection=False),
        }
        if sdxl:
            parts["text_encoder_2"] = text_encoder_for(
                sizes.sdxl_text_2, n_tokens, max_length, projection=True
            )
    counts = {name: param_count(module) for name, module in parts.items()}
    # load_family swaps this scheduler for its DDIM one from the same config.
    parts.update(tokenizer=tok, scheduler=_scheduler("epsilon"))
    if sdxl:
        return StableDiffusionXLPipeline(**parts, tokenizer_2=tok2), counts
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    return pipe, counts


@contextlib.contextmanager
def prebuilt(pipeline) -> Iterator[None]:
    """Make trainer.families.load_family take `pipeline` instead of reading a directory.

    Everything load_family does after loading (the DDPO scheduler, frozen encoders
    cast to the weight dtype, the fp16 VAE upcast) then runs unchanged; writing
    4-14 GB of random weights to disk and reading them back would cost a minute.
    """
    from unittest import mock

    from trainer.families import loading

    class _Loaded:
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            return pipeline

    with mock.patch.object(loading, "DiffusionPipeline", _Loaded):
        yield


class NoRewards:
    """Stands in for the RewardClient: the suite times the GPU, not a reward server."""

    def submit(self, images, prompts, ids=None) -> None:
        return None

    def close(self) -> None:
        return None


def train_config(preset: Path, **update: Any):
    """A preset's TrainConfig with `update` applied, validated like a config file."""
    from trainer.config import TrainConfig, load_config

    base = load_config(preset).model_dump()
    return TrainConfig.model_validate({**base, **update})


def setup(cfg, kind: str, sizes: Sizes, report: Report):
    """trainer.train.setup_run on a random-weight pipeline: the run `ddpo train` would have."""
    import torch
    from accelerate import Accelerator

    from trainer.ppo import num_passes
    from trainer.train import setup_run

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.train_gradient_accumulation_steps * num_passes(cfg),
    )
    t0 = time.perf_counter()
    pipeline, counts = build_pipeline(kind, sizes, accelerator.device)
    with prebuilt(pipeline):
        run = setup_run(cfg, accelerator, NoRewards())  # type: ignore[arg-type]
    sync()
    check_params(report, counts, PUBLISHED_PARAMS.get(kind, {}) if sizes.check_params else {})
    trainable = sum(p.numel() for p in run.unet.parameters() if p.requires_grad)
    report.figures["trainable_params"] = trainable
    report.figures["setup_s"] = time.perf_counter() - t0
    report.put("resident_after_setup_gib", allocated_gib(), NO_CUDA)
    report.settings.update(
        family=run.family.name,
        resolution=run.resolution,
        mixed_precision=cfg.mixed_precision,
        use_lora=cfg.use_lora,
        sample_batch_size=cfg.sample_batch_size,
        sample_num_batches_per_epoch=cfg.sample_num_batches_per_epoch,
        sample_num_steps=cfg.sample_num_steps,
        sample_guidance_scale=cfg.sample_guidance_scale,
        train_batch_size=cfg.train_batch_size,
        train_timestep_fraction=cfg.train_timestep_fraction,
        train_recompute_old_log_probs=cfg.train_recompute_old_log_probs,
        text_encoders_and_vae="real sizes" if sizes.check_params else "tiny",
        tokenizer="byte-level (trainer.random_pipeline), padded to the text encoder's length",
    )
    return run


def advantages_for(n: int, seed: int):
    """Some advantages: their values change no kernel's cost."""
    import torch

    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def forward_flops(run, trajs, rows: int) -> int:
    """UNet FLOPs of one guided forward over `rows` samples, counted by FlopCounterMode.

    The pass is the trainer's own (trainer.ppo.recompute_log_prob) under the run's
    autocast; on CPU the flash-attention-for-CPU kernel has no FLOP formula in
    torch and is left out, on CUDA every SDPA kernel is counted.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.ppo import recompute_log_prob

    batch = trajs.select(torch.arange(rows))
    steps = torch.zeros(rows, dtype=torch.long, device=run.family.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), run.accelerator.autocast(), counter:
        recompute_log_prob(
            run.family,
            run.unet,
            batch,
            steps,
            run.uncond,
            run.cfg.sample_guidance_scale,
            run.cfg.sample_eta,
        )
    return int(counter.get_total_flops())


def warm_up(run, sizes: Sizes) -> Any:
    """One short epoch at the timed batch shapes: kernels chosen, allocator warm."""
    from trainer.train import sample_epoch, update

    cfg = run.cfg
    run.cfg = cfg.model_copy(
        update={"sample_num_steps": sizes.warmup_steps, "sample_num_batches_per_epoch": 1}
    )
    try:
        trajs, _, _ = sample_epoch(run, 0)
        update(run, 0, trajs, advantages_for(len(trajs), 0))
    finally:
        run.cfg = cfg
    sync()
    return trajs


def timed_epoch(run, epoch: int) -> dict[str, Any]:
    """sample_epoch and update as train() runs them, each phase timed and its peak taken."""
    from trainer.train import sample_epoch, update

    reset_peak()
    t0 = time.perf_counter()
    trajs, _, _ = sample_epoch(run, epoch)
    sync()
    t1 = time.perf_counter()
    peak_sampling = peak_gib()
    reset_peak()
    stats = update(run, epoch, trajs, advantages_for(len(trajs), epoch))
    sync()
    t2 = time.perf_counter()
    return {
        "samples": len(trajs),
        "sampling_s": t1 - t0,
        "training_s": t2 - t1,
        "peak_sampling_gib": peak_sampling,
        "peak_training_gib": peak_gib(),
        "stats": stats,
    }


def epoch_report(run, sizes: Sizes, report: Report, peak_flops: float | None, why: str) -> None:
    """Warm-up, one timed epoch, FLOP utilisation: the figures of the *_lora_* parts."""
    from trainer.ppo import trained_steps_per_sample

    cfg = run.cfg
    warm = warm_up(run, sizes)
    flops = forward_flops(run, warm, cfg.train_batch_size)
    del warm
    e = timed_epoch(run, 1)
    n, stats = e["samples"], e["stats"]
    epoch_s = e["sampling_s"] + e["training_s"]
    report.figures.update(
        sampling_s=e["sampling_s"],
        training_s=e["training_s"],
        epoch_s=epoch_s,
        images_per_s=n / epoch_s,
        sampling_images_per_s=n / e["sampling_s"],
    )
    peaks = [p for p in (e["peak_sampling_gib"], e["peak_training_gib"]) if p is not None]
    report.put("peak_memory_gib", max(peaks) if peaks else None, NO_CUDA)
    report.put("peak_sampling_gib", e["peak_sampling_gib"], NO_CUDA)
    report.put("peak_training_gib", e["peak_training_gib"], NO_CUDA)
    # With lr > 0 the weights move after the first optimizer step, so these are not the
    # unchanged-weights figures of the sd15_ratio_* parts.
    report.figures["log_ratio_abs_max"] = stats.get("log_ratio_abs_max")
    drift = stats.get("old_log_prob_drift")
    report.put("old_log_prob_drift", drift, "not probed (train_recompute_old_log_probs never)")
    recomputed = bool(stats.get("old_log_prob_recomputed", 0.0))
    report.figures["recomputed_old_log_probs"] = recomputed

    # Model FLOPs: forward FLOPs of a training pass x 3 (forward + backward), per trained
    # step of every sample; sampling: one guided forward per step per sample.
    kept = trained_steps_per_sample(cfg) * cfg.train_num_inner_epochs
    per_sample_step = flops / cfg.train_batch_size
    train_flops = 3 * per_sample_step * n * kept
    sample_flops = per_sample_step * n * cfg.sample_num_steps
    report.figures.update(
        unet_forward_flops_per_sample_step=per_sample_step,
        training_model_flops=train_flops,
        training_tflops_per_s=train_flops / e["training_s"] / 1e12,
        sampling_tflops_per_s=sample_flops / e["sampling_s"] / 1e12,
    )
    if peak_flops:
        report.figures["training_mfu"] = train_flops / e["training_s"] / peak_flops
        report.figures["sampling_mfu"] = sample_flops / e["sampling_s"] / peak_flops
        # "auto" recomputing the old log-probs adds a forward per trained step.
        extra = per_sample_step * n * trained_steps_per_sample(cfg) if recomputed else 0.0
        report.figures["training_mfu_counting_recompute"] = (
            (train_flops + extra) / e["training_s"] / peak_flops
        )
    else:
        for name in ("training_mfu", "sampling_mfu", "training_mfu_counting_recompute"):
            report.unavailable[name] = why
    report.notes.append(
        "timing: one warm-up epoch at the timed batch shapes "
        f"({sizes.warmup_steps} steps, 1 sampling batch), then one timed epoch; "
        "no reward server (scoring is the reward server's part)"
    )
