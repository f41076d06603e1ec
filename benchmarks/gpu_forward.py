"""GPU-suite parts: one DiffusionNFT or AWM epoch on the real SD 1.5 architecture (issue 22).

The same run as the suite's sd15_lora_bf16 part (PPO; configs/sd15-aesthetic-lora.toml,
512 px, random weights) with `train_algorithm` "nft" or "awm", no guidance (both
algorithms' default) and 2 timesteps per sample for both, so the two epochs compare:
time per phase, peak memory, and the bytes kept per sample (one clean latent, where PPO
keeps all steps + 1). Registered in benchmarks/gpu_suite.py PARTS as "sd15_nft_bf16" and
"sd15_awm_bf16"; gpu_epoch is imported when a part runs, as the other parts' helpers are.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def part_sd15_forward(
    algorithm: str, precision: str
) -> Callable[[argparse.Namespace, Any, Any], None]:
    def run_part(args: argparse.Namespace, sizes: Any, report: Any) -> None:
        import gpu_epoch as suite
        from gpu_measure import NO_CUDA
        from gpu_sd_parts import sd_update

        cfg = suite.train_config(
            suite.LORA_PRESET,
            pretrained_model="random:sd15",
            mixed_precision=precision,
            log_images_every=0,
            train_algorithm=algorithm,
            sample_guidance_scale=1.0,
            train_timesteps_per_pass=2,
            **sd_update(sizes),
        )
        run = suite.setup(cfg, "sd15", sizes, report)
        report.settings.update(train_algorithm=algorithm, train_timesteps_per_pass=2)
        suite.warm_up(run, sizes)
        e = suite.timed_epoch(run, 1)
        n, epoch_s = e["samples"], e["sampling_s"] + e["training_s"]
        report.figures.update(
            sampling_s=e["sampling_s"],
            training_s=e["training_s"],
            epoch_s=epoch_s,
            images_per_s=n / epoch_s,
            **{f"{algorithm}_{k}": v for k, v in e["stats"].items()},
        )
        peaks = [p for p in (e["peak_sampling_gib"], e["peak_training_gib"]) if p is not None]
        report.put("peak_memory_gib", max(peaks) if peaks else None, NO_CUDA)
        report.put("peak_training_gib", e["peak_training_gib"], NO_CUDA)
        latent = 4
        for d in run.family.latent_shape(run.resolution):
            latent *= d
        report.figures[f"kept_bytes_per_sample_{algorithm}"] = latent
        report.figures["kept_bytes_per_sample_ppo"] = latent * (cfg.sample_num_steps + 1)
        report.notes.append(
            f"{algorithm}: one warm-up epoch, then one timed epoch; no reward server"
        )

    return run_part
