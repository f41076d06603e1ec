"""The PPO ratio before any update, per precision, and what recomputing old log-probs costs.

For each pipeline and precision: sample one batch (LoRA, CFG, sample batch 6),
then run the PPO update with unchanged weights (lr 0) and train batch 3, once
with the sampled log-probs (`train_recompute_old_log_probs = "never"`) and
once recomputed at the training batch shape ("always"), alternating, timed.
Prints the largest |log ratio| per step and over the update, and the cost of
recomputing relative to the update.

    python benchmarks/ppo_ratio.py --repeats 3

Writes benchmarks/results/ppo_ratio.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import (
    OUR_PACKAGES,
    REPO,
    SAMPLE_SIZE,
    build_bench_pipeline,
    default_pipeline_dir,
    machine_info,
    summarize,
    versions,
    write_result,
)

BUILTIN = REPO / "models" / "tiny-sd"
DTYPE_NAMES = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}


def measure(model: Path, precision: str, steps: int, repeats: int) -> dict[str, object]:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from trainer.config import TrainConfig
    from trainer.families import load_family
    from trainer.ppo import plan_inner_epoch, ppo_update, rescore_old_log_probs
    from trainer.sampling import sample_trajectories
    from trainer.train import prepare_trainable_unet

    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = TrainConfig(
        pretrained_model=str(model),
        train_algorithm="ppo",
        prompts=["a"],
        rewards=[{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
        mixed_precision=precision,
        sample_num_steps=steps,
        sample_guidance_scale=5.0,
        sample_batch_size=6,
        sample_num_batches_per_epoch=1,
        train_batch_size=3,
    )
    acc = Accelerator(cpu=True, mixed_precision=precision)
    family = load_family(str(model), None, acc.device, getattr(torch, DTYPE_NAMES[precision]))
    resolution = family.default_resolution
    unet = prepare_trainable_unet(cfg, family, acc)
    params = [p for p in unet.parameters() if p.requires_grad]
    unet, opt = acc.prepare(unet, torch.optim.AdamW(params, lr=0.0))
    uncond = family.encode_unconditional(resolution)
    prompts = [
        "a red circle on a white background",
        "a blue square on a black background",
        "a green triangle on a gray background",
    ] * 2
    with acc.autocast():
        trajs = sample_trajectories(
            family,
            unet,
            prompts,
            torch.arange(6),
            [1, 2, 3, 4, 5, 6],
            steps,
            5.0,
            1.0,
            resolution,
            uncond=uncond,
        )
    plan = plan_inner_epoch(6, steps, cfg, torch.Generator().manual_seed(0), acc.device)
    unet.train()
    rescored, _ = rescore_old_log_probs(acc, family, unet, trajs, plan, cfg, uncond)
    per_step = (rescored - trajs.log_probs).abs().max(dim=0).values.tolist()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    times: dict[str, list[float]] = {"never": [], "always": []}
    worst: dict[str, float] = {}
    for _ in range(repeats):
        for mode in ("never", "always"):
            run_cfg = cfg.model_copy(update={"train_recompute_old_log_probs": mode})
            gen = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            stats = ppo_update(acc, family, unet, opt, trajs, adv, run_cfg, gen, uncond)
            times[mode].append(time.perf_counter() - t0)
            worst[mode] = stats["log_ratio_abs_max"]
    never, always = summarize(times["never"]), summarize(times["always"])
    return {
        "model": str(model),
        "precision": precision,
        "steps": steps,
        "max_abs_log_ratio_per_step_sampled_vs_train_shape": per_step,
        "steps_over_clip_range_1e-4": sum(v > 1e-4 for v in per_step),
        "max_abs_log_ratio_never": worst["never"],
        "max_abs_log_ratio_always": worst["always"],
        "update_s_never": never,
        "update_s_always": always,
        "recompute_cost_ratio_median": always["median"] / never["median"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precisions", default="no,bf16,fp16")
    args = parser.parse_args()
    random_dir = build_bench_pipeline(default_pipeline_dir(), SAMPLE_SIZE)
    rows = []
    header = (
        f"{'pipeline':<10} {'precision':<5} {'max|lr| sampled':>15} {'steps>1e-4':>10} "
        f"{'never':>9} {'always':>9} {'update s (never/always, median)':>32}"
    )
    print(header)
    for name, model in (("random", random_dir), ("built-in", BUILTIN)):
        for precision in args.precisions.split(","):
            r = measure(model, precision, args.steps, args.repeats)
            r["pipeline"] = name
            rows.append(r)
            print(
                f"{name:<10} {precision:<5} "
                f"{max(r['max_abs_log_ratio_per_step_sampled_vs_train_shape']):>15.1e} "
                f"{r['steps_over_clip_range_1e-4']:>10} {r['max_abs_log_ratio_never']:>9.1e} "
                f"{r['max_abs_log_ratio_always']:>9.1e} "
                f"{r['update_s_never']['median']:>14.2f} / {r['update_s_always']['median']:.2f}"
                f" (x{r['recompute_cost_ratio_median']:.2f})"
            )
    path = write_result(
        "ppo_ratio",
        {"machine": machine_info(), "versions": versions(OUR_PACKAGES), "rows": rows},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
