"""The GPU suite's SD parts: SD 1.5 LoRA / full fine-tuning / PPO ratio, SDXL, flow presets,
and the aesthetic scorer. Each is `(args, sizes, report) -> None`, run in its own process.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from gpu_archs import PUBLISHED_PARAMS, RATIO_TARGET_FRACTION, Sizes
from gpu_epoch import (
    FULL_PRESET,
    LORA_PRESET,
    REPO,
    advantages_for,
    epoch_report,
    setup,
    train_config,
)
from gpu_measure import (
    NO_CUDA,
    Report,
    allocated_gib,
    check_params,
    device_info,
    param_count,
    peak_gib,
    reset_peak,
    sync,
)


def sd_update(sizes: Sizes) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if sizes.sd_steps is not None:
        update["sample_num_steps"] = sizes.sd_steps
    if sizes.sd_num_batches is not None:
        update["sample_num_batches_per_epoch"] = sizes.sd_num_batches
    return update


def peak_flops_of(args: argparse.Namespace) -> tuple[float | None, str]:
    info = device_info(args)
    return info["peak_bf16_flops"], info["peak_bf16_flops_source"]


def part_sd15_lora(precision: str) -> Callable[[argparse.Namespace, Sizes, Report], None]:
    def run_part(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
        cfg = train_config(
            LORA_PRESET,
            pretrained_model="random:sd15",
            mixed_precision=precision,
            log_images_every=0,
            **sd_update(sizes),
        )
        run = setup(cfg, "sd15", sizes, report)
        peak, source = peak_flops_of(args)
        report.settings["peak_flops_assumed"] = source
        epoch_report(run, sizes, report, peak, source)

    return run_part


def part_sd15_full_ft(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
    """Full fine-tuning's peak memory: weights, gradients, optimizer state and activations."""
    from trainer.ppo import trained_steps_per_sample
    from trainer.train import sample_epoch, update

    try:
        import bitsandbytes  # noqa: F401

        eight_bit, optimizer = True, "bitsandbytes AdamW8bit"
    except Exception as exc:  # ImportError, or a CUDA-less build failing at import
        eight_bit, optimizer = False, f"torch AdamW (bitsandbytes not importable: {exc})"
    cfg = train_config(
        FULL_PRESET,
        pretrained_model="random:sd15",
        mixed_precision=args.full_precision,
        gradient_checkpointing=True,
        train_use_8bit_adam=eight_bit,
        log_images_every=0,
        sample_num_batches_per_epoch=1,  # 6 samples: 2 train batches, 2 optimizer steps
        sample_num_steps=sizes.full_ft_steps,
    )
    report.settings["optimizer"] = optimizer
    report.settings["gradient_checkpointing"] = True
    report.notes.append(
        f"{sizes.full_ft_steps} denoising steps per sample: memory per pass does not depend on "
        "the number of steps; the second optimizer step runs with its state allocated"
    )
    run = setup(cfg, "sd15", sizes, report)
    reset_peak()
    t0 = time.perf_counter()
    trajs, _, _ = sample_epoch(run, 0)
    sync()
    report.put("peak_sampling_gib", peak_gib(), NO_CUDA)
    t1 = time.perf_counter()
    reset_peak()
    update(run, 0, trajs, advantages_for(len(trajs), 0))
    sync()
    t2 = time.perf_counter()
    peak = peak_gib()
    report.put("peak_training_gib", peak, NO_CUDA)
    report.put("resident_after_update_gib", allocated_gib(), NO_CUDA)
    report.put("fits_24gb", None if peak is None else peak <= 24.0, NO_CUDA)
    sample_steps = len(trajs) * trained_steps_per_sample(cfg)
    report.figures.update(
        sampling_s=t1 - t0,
        training_s=t2 - t1,
        training_s_per_sample_step=(t2 - t1) / sample_steps,
    )


def part_sd15_ratio(precision: str) -> Callable[[argparse.Namespace, Sizes, Report], None]:
    def run_part(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
        """The ratio PPO starts from, with unchanged weights: ideally exactly 1."""
        import torch

        from trainer.ppo import plan_inner_epoch, rescore_old_log_probs
        from trainer.train import sample_epoch, update

        cfg = train_config(
            LORA_PRESET,
            pretrained_model="random:sd15",
            mixed_precision=precision,
            log_images_every=0,
            **{**sd_update(sizes), "sample_num_batches_per_epoch": 1},
        )
        run = setup(cfg, "sd15", sizes, report)
        for group in run.optimizer.param_groups:
            group["lr"] = 0.0  # unchanged weights: every ratio should be exactly 1
        report.settings["learning_rate"] = 0.0
        report.settings["train_clip_range"] = cfg.train_clip_range
        trajs, _, _ = sample_epoch(run, 0)
        plan = plan_inner_epoch(
            len(trajs),
            cfg.sample_num_steps,
            cfg,
            torch.Generator().manual_seed(0),
            run.family.device,
        )
        run.unet.train()
        rescored, _ = rescore_old_log_probs(
            run.accelerator, run.family, run.unet, trajs, plan, cfg, run.uncond
        )
        run.unet.eval()
        per_step = (rescored - trajs.log_probs.to(rescored.device)).abs().amax(dim=0)
        report.figures["max_abs_log_ratio_per_step"] = per_step.tolist()
        report.figures["max_abs_log_ratio_sampled_vs_train_shape"] = float(per_step.max())
        target = RATIO_TARGET_FRACTION * cfg.train_clip_range
        report.settings["target_abs_log_ratio"] = target
        report.figures["steps_over_target"] = int((per_step > target).sum())
        adv = advantages_for(len(trajs), 0)
        for mode in ("never", "auto"):
            run.cfg = cfg.model_copy(update={"train_recompute_old_log_probs": mode})
            t0 = time.perf_counter()
            stats = update(run, 0, trajs, adv)
            sync()
            report.figures[f"update_s_{mode}"] = time.perf_counter() - t0
            worst = stats["log_ratio_abs_max"]
            report.figures[f"log_ratio_abs_max_{mode}"] = worst
            report.figures[f"within_target_{mode}"] = worst <= target
            drift = stats.get("old_log_prob_drift")
            reason = "never probes" if mode == "never" else "not returned"
            report.put(f"old_log_prob_drift_{mode}", drift, reason)
        run.cfg = cfg

    return run_part


def part_sdxl_lora(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
    cfg = train_config(
        LORA_PRESET,
        pretrained_model="random:sdxl",
        mixed_precision="bf16",
        log_images_every=0,
        sample_num_steps=sizes.sdxl_steps,
        sample_batch_size=sizes.sdxl_sample_batch,
        sample_num_batches_per_epoch=sizes.sdxl_num_batches,
        train_batch_size=sizes.sdxl_train_batch,
    )
    run = setup(cfg, "sdxl", sizes, report)
    peak, source = peak_flops_of(args)
    report.settings["peak_flops_assumed"] = source
    epoch_report(run, sizes, report, peak, source)


def part_aesthetic(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
    """Images/s of the aesthetic scorer as the reward server runs it, and its pieces."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from reward_server.scorers.aesthetic import AestheticHead, AestheticScorer, ClipPreprocess

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**sizes.clip_vision))
        head = AestheticHead()
    if sizes.check_params:
        check_params(
            report,
            {"clip_vision": param_count(vision)},
            {"clip_vision": PUBLISHED_PARAMS["clip_vision"]},
        )
    batch, px = sizes.aesthetic_batch, sizes.aesthetic_image_px
    # As reward_server/scorers/aesthetic.py's build() makes it (fp32, preprocessing in PIL).
    scorer = AestheticScorer(
        vision, head, ClipPreprocess(vision.config.image_size), device=device, max_batch_size=batch
    )
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)) for _ in range(batch)
    ]
    names = ["x"] * batch
    report.settings.update(batch=batch, image_px=px, dtype="float32 (as the scorer loads it)")

    def rate(fn: Callable[[], Any]) -> float:
        for _ in range(2):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(sizes.aesthetic_repeats):
            fn()
        sync()
        return batch * sizes.aesthetic_repeats / (time.perf_counter() - t0)

    pixels = scorer.preprocess(images).to(scorer.device)

    def model_only() -> None:  # ClipEmbedder.embed_batch and the head, minus preprocessing
        with torch.inference_mode():
            embeds = scorer.vision(pixel_values=pixels).image_embeds.float()
            scorer.head(embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True))

    reset_peak()
    report.figures["images_per_s"] = rate(lambda: scorer.score(images, names))
    report.put("peak_memory_gib", peak_gib(), NO_CUDA)
    report.figures["preprocess_images_per_s"] = rate(lambda: scorer.preprocess(images))
    report.figures["model_images_per_s"] = rate(model_only)
    scorer.vision.to(torch.bfloat16)  # the head stays fp32: it is a few kFLOPs per image
    pixels = pixels.to(torch.bfloat16)
    report.figures["model_images_per_s_bf16"] = rate(model_only)
    report.notes.append(
        "images_per_s: AestheticScorer.score end to end (PIL preprocessing on one CPU thread "
        "+ CLIP + head); model_*: the GPU part alone on preprocessed pixels; _bf16: the same "
        "model cast to bf16, which the scorer does not do today"
    )


def part_flow_lora(kind: str, preset: str) -> Callable[[argparse.Namespace, Sizes, Report], None]:
    """A flow preset's epoch with one sampling batch (one group), as on one card."""

    def run_part(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
        from trainer.config import load_config

        path = REPO / "configs" / preset
        base = load_config(path)
        update: dict[str, Any] = {
            "pretrained_model": f"random:{kind}",
            "log_images_every": 0,
            "sample_num_batches_per_epoch": 1,
            "sample_group_size": base.sample_batch_size,
            "train_gradient_accumulation_steps": base.sample_batch_size // base.train_batch_size,
        }
        if sizes.flow_steps is not None:
            update["sample_num_steps"] = sizes.flow_steps
        if sizes.flow_resolution is not None:
            update["resolution"] = sizes.flow_resolution
        run = setup(train_config(path, **update), kind, sizes, report)
        run_cfg = run.cfg
        report.settings.update(
            preset=preset,
            sample_eta=run_cfg.sample_eta,
            train_kl_coef=run_cfg.train_kl_coef,
            gradient_checkpointing=run_cfg.gradient_checkpointing,
            lora_rank=run_cfg.lora_rank,
            architecture="benchmarks/gpu_flow.py (parameter counts recorded, not checked)",
        )
        peak, source = peak_flops_of(args)
        report.settings["peak_flops_assumed"] = source
        epoch_report(run, sizes, report, peak, source)

    return run_part
