"""Samples and wall time to a held-out JPEG gain: PPO (defaults, small-budget preset),
DiffusionNFT, AWM and trl 0.19.1's DDPOTrainer (issue 22 item 6), side by side in one run.

Each method trains `ddpo train` on the same 3 prompts with the same budget layer
(sample batch 6, --sample-num-steps DDIM steps, float32 on a CPU), saving its
user-facing weights every --eval-every epochs. After each run every saved
checkpoint is judged on the held-out set of benchmarks/jpeg_transfer.py (3 prompts
x --eval-seeds fixed seeds, sampled with the run's own sampler: PPO's eta and
guidance, NFT / AWM deterministic DDIM without guidance, trl its own): gain = before -
after, kB. trl runs in benchmarks/.venv-trl (benchmarks/setup_trl_venv.sh) through
benchmarks/trl_jpeg_train.py, which saves its LoRA every --eval-every epochs.
The figures: the first checkpoint whose gain reaches --target kB, as samples trained
and training wall time (sampling + rewards + updates, from metrics.jsonl; checkpoint
writing and judging not counted); the curve of gains; the final gain.

Methods run in rotated order per seed (ppo, nft, awm, ... then nft, awm, ..., ppo)
so that machine noise spreads over all of them.

    nice -n 5 python benchmarks/forward_process_jpeg.py --model-dir models/tiny-sd --seeds 1
    python benchmarks/forward_process_jpeg.py --methods nft --set nft:train_learning_rate=3e-3
    python benchmarks/forward_process_jpeg.py --report benchmarks/results/forward_process_jpeg.json

Writes benchmarks/results/<--out>.json after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS_DIR,
    child_env,
    stop_on_sigterm,
)
from jpeg_eval import Sampler, Weights, eval_seeds, jpeg_sizes_kb
from jpeg_transfer import PROMPTS, SCORER, our_config, run_trl, train_from_data, trl_args
from side_by_side import TRL, chosen_methods, finish, header, record, rotated

PRESET = REPO / "configs" / "presets" / "small-budget-lora.toml"
#: The forward-process recipe: the preset's layout (groups of 4, 12 samples per epoch,
#: one train batch of 6), LoRA, no guidance, every one of the steps trained; lr 1e-2 as
#: the PPO preset (tuned on tiny-sd seed 0: 3e-3 and 1e-2 tried, docs/benchmarks.md).
FORWARD = {
    "use_lora": True,
    "sample_group_size": 4,
    "sample_num_batches_per_epoch": 2,
    "train_batch_size": 6,
    "train_timesteps_per_pass": 10,
    "per_prompt_stat_tracking": False,
    "train_learning_rate": 1e-2,
}
METHODS: dict[str, dict[str, Any]] = {
    "ppo-defaults": {"train_algorithm": "ppo"},
    "ppo-preset": tomllib.loads(PRESET.read_text(encoding="utf-8")),
    "nft": {**FORWARD, "train_algorithm": "nft"},
    "awm": {**FORWARD, "train_algorithm": "awm"},
}
# TRL: trl 0.19.1's DDPOTrainer (benchmarks/.venv-trl) at its own defaults, on the budget
# layer only (sample batch 6 x its 2 batches per epoch, the steps, float32 on a CPU); its
# train batch (1) is ours too, so it is PPO at the defaults in another implementation.


def method_keys(name: str, base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """budget layer < method recipe < `--set name:key=value` overrides for that method."""
    from trainer.config import apply_overrides

    mine = [o.split(":", 1)[1] for o in overrides if o.split(":", 1)[0] == name]
    return apply_overrides({**base, **METHODS[name]}, mine)


def eval_sampler(cfg) -> Sampler:
    """The sampler the run trained with: deterministic DDIM for nft / awm unless stochastic."""
    deterministic = cfg.train_algorithm != "ppo" and not cfg.train_fp_stochastic_sampler
    eta = 0.0 if deterministic else cfg.sample_eta
    return Sampler(steps=cfg.sample_num_steps, guidance=cfg.sample_guidance_scale, eta=eta)


def train_run(
    name: str, keys: dict, model_dir: Path, url: str, seed: int, epochs: int, every: int, work: Path
) -> dict[str, Any]:
    """One `ddpo train` saving every `every` epochs; the checkpoints stay for judging."""
    out = work / f"{name}-seed{seed}"
    cfg, data = our_config(keys, model_dir, out, url, seed, epochs)
    data.update(save_freq=every, num_checkpoint_limit=10_000)
    rows = train_from_data(data, work / f"{name}-seed{seed}", out)
    given = json.loads(cfg.model_dump_json())
    return {
        "out": out,
        "rows": rows,
        "checkpoints": our_checkpoints(cfg, out),
        "keys": {k: given[k] for k in keys},
    }


def trl_run(model_dir: Path, keys: dict, seed: int, epochs: int, every: int, work: Path) -> dict:
    """trl 0.19.1's DDPOTrainer at its defaults on the budget layer, saving every `every`."""
    extra = [*trl_args(keys), "--save-every", str(every)]
    got = run_trl(model_dir, seed, epochs, keys["sample_batch_size"], extra, work)
    save = got["weights"].path
    points = [
        (e, Weights(kind="lora", path=save / f"epoch_{e}", lora_scale=got["weights"].lora_scale))
        for e in range(every, epochs + 1, every)
    ]
    got["config"].pop("seed", None)
    return {
        "out": save,
        "rows": got["epochs"],
        "checkpoints": (got["sampler"], points),
        "keys": got["config"],
    }


def our_checkpoints(cfg: Any, out: Path) -> tuple[Sampler, list[tuple[int, Weights]]]:
    """A `ddpo train` run's sampler and (epochs, weights) per saved checkpoint."""
    points = []
    for ckpt in sorted((out / "checkpoints").glob("epoch_*")):
        weights = Weights(
            kind="lora", path=ckpt / "lora", lora_scale=cfg.lora_alpha / cfg.lora_rank
        )
        if not cfg.use_lora:
            weights = Weights(kind="unet", path=ckpt / "unet")
        points.append((int(ckpt.name.split("_")[1]), weights))
    return eval_sampler(cfg), points


def judge(
    run: dict, model_dir: Path, seeds: list[int], before: dict, target: float, per_epoch: int
) -> dict[str, Any]:
    """Held-out gain of every checkpoint; the first to reach `target`."""
    sampler, points = run["checkpoints"]
    rows = run["rows"]  # one per epoch, "time_total_s" as in metrics.jsonl
    if sampler not in before:
        before[sampler] = statistics.fmean(jpeg_sizes_kb(model_dir, PROMPTS, seeds, sampler))
    b = before[sampler]
    curve = []
    for epochs, weights in sorted(points, key=lambda p: p[0]):
        train_s = sum(r["time_total_s"] for r in rows[:epochs])
        after = statistics.fmean(jpeg_sizes_kb(model_dir, PROMPTS, seeds, sampler, weights))
        curve.append(
            {
                "epochs": epochs,
                "samples": epochs * per_epoch,
                "train_s": train_s,
                "after_kb": after,
                "gain_kb": b - after,
            }
        )
    reached = next((c for c in curve if c["gain_kb"] >= target), None)
    return {
        "before_kb": b,
        "sampler": sampler.model_dump(),
        "curve": curve,
        "final_gain_kb": curve[-1]["gain_kb"] if curve else float("nan"),
        "samples_to_target": reached["samples"] if reached else None,
        "train_s_to_target": reached["train_s"] if reached else None,
        "train_s_total": sum(r["time_total_s"] for r in rows),
        "reward_first_last": [rows[0]["reward_mean"], rows[-1]["reward_mean"]],
        "keys": run["keys"],
    }


def print_report(doc: dict[str, Any]) -> None:
    target = doc["target_kb"]
    print(f"\nheld-out gain (kB, > 0 = smaller JPEGs); target +{target} kB")
    print(
        f"{'method':<14}{'seed':>5}{'before':>8}{'final':>8}{'samples->':>10}{'min->':>7}"
        "  curve (samples:gain)"
    )
    for name, runs in doc["runs"].items():
        for r in runs:
            s, t = r["samples_to_target"], r["train_s_to_target"]
            curve = " ".join(f"{c['samples']}:{c['gain_kb']:+.3f}" for c in r["curve"])
            print(
                f"{name:<14}{r['seed']:>5}{r['before_kb']:>8.3f}{r['final_gain_kb']:>+8.3f}"
                f"{s if s is not None else 'never':>10}"
                f"{t / 60 if t is not None else float('nan'):>7.1f}  {curve}"
            )
    for name, runs in doc["runs"].items():
        gains = [r["final_gain_kb"] for r in runs]
        if gains:
            print(
                f"{name}: final gain mean {statistics.fmean(gains):+.3f} kB, spread "
                f"{max(gains) - min(gains):.3f} over {len(gains)} seed(s); reached "
                f"{sum(r['samples_to_target'] is not None for r in runs)}/{len(runs)}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "tiny-sd")
    ap.add_argument("--methods", default=",".join([*METHODS, TRL]))
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="METHOD:key=value, for that method only",
    )
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=360, help="trained samples per run")
    ap.add_argument("--eval-every", type=int, default=5, help="epochs between checkpoints")
    ap.add_argument("--sample-num-steps", type=int, default=10)
    ap.add_argument("--eval-seeds", type=int, default=12, help="held-out seeds per prompt")
    ap.add_argument("--target", type=float, default=0.1, help="held-out gain, kB")
    ap.add_argument("--out", default="forward_process_jpeg")
    ap.add_argument("--report", type=Path, default=None)
    args = ap.parse_args()
    if args.report is not None:
        print_report(json.loads(args.report.read_text()))
        return
    stop_on_sigterm()
    import torch

    from ddpo.server_process import RewardServerProcess

    names = chosen_methods(args.methods)
    # absolute: trl's child runs in benchmarks/, where a relative path reads as a hub id
    args.model_dir = args.model_dir.resolve()
    base = {"sample_batch_size": 6, "sample_num_steps": args.sample_num_steps}
    if not torch.cuda.is_available():
        base["mixed_precision"] = "no"
    seeds = eval_seeds(args.eval_seeds)
    doc = header(names, args.model_dir, target_kb=args.target, budget_layer=base)
    args_out = RESULTS_DIR / f"{args.out}.json"
    work = Path(tempfile.mkdtemp(prefix="ddpo-fp-jpeg-"))
    before: dict[Sampler, float] = {}
    with RewardServerProcess([SCORER], log_file=work / "server.log", extra_env=child_env()) as srv:
        for seed, name in rotated(names, args.first_seed, args.seeds):
            keys = base if name == TRL else method_keys(name, base, args.overrides)
            per_epoch = keys["sample_batch_size"] * keys.get("sample_num_batches_per_epoch", 2)
            epochs = args.samples // per_epoch
            if name == TRL:
                run = trl_run(args.model_dir, keys, seed, epochs, args.eval_every, work)
            else:
                run = train_run(
                    name, keys, args.model_dir, srv.url, seed, epochs, args.eval_every, work
                )
            result = {
                "seed": seed,
                "load": os.getloadavg()[0],
                **judge(run, args.model_dir, seeds, before, args.target, per_epoch),
            }
            shutil.rmtree(run["out"], ignore_errors=True)
            print(
                f"{name} seed {seed}: final {result['final_gain_kb']:+.3f} kB, to target "
                f"{result['samples_to_target']} samples, train "
                f"{result['train_s_total'] / 60:.1f} min, load {result['load']:.1f}",
                flush=True,
            )
            record(doc, args_out, name, result)
    finish(doc, args_out, print_report, work)


if __name__ == "__main__":
    main()
