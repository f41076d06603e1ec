"""Samples and wall time to a held-out prompt-fidelity target: PPO (defaults, small-budget
preset), DiffusionNFT, AWM and trl 0.19.1's DDPOTrainer on the demo model, side by side in
one run (issue 22 item 6, its third benchmark).

Every method trains on the prompt-fidelity demo's prompts (the held-out shape-colour
combinations and their seen neighbours) with the demo's layout (`ddpo.demo.demo_config`:
16 samples per epoch, 10 DDIM steps, 64 px, train batch 8) under its own recipe: PPO with
every other key at its default, configs/presets/small-budget-lora.toml, the demo's own
alignment-nft.toml, the same with `train_algorithm = "awm"`, and trl at its defaults
scoring through the same reward server over HTTP. A run stops at --samples or after
--minutes of wall time, whichever comes first, saving its weights every --eval-every
epochs. Each checkpoint is judged as a user samples it (diffusers' pipeline with the run's
sampler, benchmarks/jpeg_eval.py) on held-out seeds: the `prompt_fidelity` classifier's
share of images fully right, held-out combinations and seen ones apart, and the rule judge
beside it. The figures: the first checkpoint whose held-out fidelity reaches --target, as
samples and training minutes (sampling + rewards + updates, from metrics.jsonl).

    python benchmarks/forward_process_fidelity.py --seeds 3
    python benchmarks/forward_process_fidelity.py --report \
        benchmarks/results/forward_process_fidelity.json
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
from forward_process_jpeg import our_checkpoints
from jpeg_eval import Sampler, Weights, eval_seeds, sample_images
from jpeg_transfer import run_trl, toml_value, train_from_data, trl_args
from side_by_side import TRL, chosen_methods, finish, header, record, rotated

PRESETS = REPO / "configs" / "presets"
SCORER = "prompt_fidelity"
#: trl DDPOConfig.sample_num_batches_per_epoch default, which trl_jpeg_train.py keeps.
TRL_BATCHES_PER_EPOCH = 2
#: Each method's recipe, layered under the demo's layout (what demo_config sets wins).
METHODS: dict[str, dict[str, Any]] = {
    "ppo-defaults": {"train_algorithm": "ppo"},
    "ppo-preset": tomllib.loads((PRESETS / "small-budget-lora.toml").read_text()),
    "nft": tomllib.loads((PRESETS / "alignment-nft.toml").read_text()),
    "awm": {
        **tomllib.loads((PRESETS / "alignment-nft.toml").read_text()),
        "train_algorithm": "awm",
    },
}


def method_config(name: str, model_dir: Path, out: Path, url: str, seed: int, epochs: int, work):
    """The demo's config for `name`'s recipe, saving every checkpoint the run makes."""
    from ddpo.demo import demo_config

    recipe = work / f"{name}-recipe.toml"
    recipe.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in METHODS[name].items()))
    cfg = demo_config(SCORER, epochs, out, url, model_dir, recipe=recipe)
    return cfg.model_copy(update={"seed": seed})


def config_data(cfg, every: int) -> dict[str, Any]:
    """`cfg` as the keys a config file would give, checkpoints every `every` epochs."""
    data = cfg.model_dump(mode="json", exclude_defaults=True)
    data.update(seed=cfg.seed, save_freq=every, num_checkpoint_limit=10_000, log_images_every=0)
    data["rewards"] = [
        {k: v for k, v in r.items() if v is not None} for r in data.get("rewards", [])
    ]
    return data


def fidelity(model_dir: Path, seeds: list[int], sampler: Sampler, weights: Weights | None):
    """Both judges' fidelity, held-out and seen combinations apart."""
    import numpy as np

    from ddpo.demo_fidelity import fidelity_report, train_prompts

    prompts = train_prompts()
    images = sample_images(model_dir, prompts, seeds, sampler, weights)
    per_image = [p for p in prompts for _ in seeds]
    report = fidelity_report(np.stack([np.asarray(i) for i in images]), per_image)
    keys = {"classifier_held_out", "classifier_seen", "rule_held_out", "rule_seen"}
    return report.model_dump(include=keys)


def judge(run: dict, model_dir: Path, seeds: list[int], before: dict, target: float, per_epoch):
    """Fidelity of every checkpoint; the first whose held-out fidelity reaches `target`."""
    sampler, points = run["checkpoints"]
    rows = run["rows"]
    if sampler not in before:
        before[sampler] = fidelity(model_dir, seeds, sampler, None)
    curve = [
        {
            "epochs": epochs,
            "samples": epochs * per_epoch,
            "train_s": sum(r["time_total_s"] for r in rows[:epochs]),
            **fidelity(model_dir, seeds, sampler, weights),
        }
        for epochs, weights in sorted(points, key=lambda p: p[0])
        if epochs <= len(rows)
    ]
    reached = next((c for c in curve if c["classifier_held_out"] >= target), None)
    return {
        "before": before[sampler],
        "sampler": sampler.model_dump(),
        "curve": curve,
        "samples_to_target": reached["samples"] if reached else None,
        "train_s_to_target": reached["train_s"] if reached else None,
        "samples_total": len(rows) * per_epoch,
        "train_s_total": sum(r["time_total_s"] for r in rows),
        "reward_first_last": [rows[0]["reward_mean"], rows[-1]["reward_mean"]] if rows else [],
        "keys": run["keys"],
    }


def ours_run(name, model_dir, url, seed, samples, minutes, every, work) -> dict[str, Any]:
    """One `ddpo train` of `name`'s recipe, stopped at `samples` or after `minutes`."""
    out = work / f"{name}-seed{seed}"
    cfg = method_config(name, model_dir, out, url, seed, 1, work)
    per_epoch = cfg.sample_batch_size * cfg.sample_num_batches_per_epoch
    data = {**config_data(cfg, every), "num_epochs": samples // per_epoch}
    rows = train_from_data(data, work / f"{name}-seed{seed}", out, timeout_s=minutes * 60)
    given = json.loads(cfg.model_dump_json())
    return {
        "out": out,
        "rows": rows,
        "per_epoch": per_epoch,
        "checkpoints": our_checkpoints(cfg, out),  # the run's own sampler, as forward_process_jpeg
        "keys": {k: given[k] for k in METHODS[name]},
    }


def trl_fidelity_run(model_dir, url, seed, samples, minutes, every, work) -> dict[str, Any]:
    """trl's DDPOTrainer at its defaults on the demo's layout, scoring over HTTP.

    The layout (prompts, sample batch, steps, train batch, precision) is read from the
    demo's own config, so trl follows the demo if the demo changes.
    """
    from ddpo.demo import demo_config

    cfg = demo_config(SCORER, 1, work / "trl-layout", url, model_dir)
    if cfg.sample_num_batches_per_epoch != TRL_BATCHES_PER_EPOCH:
        raise SystemExit(
            f"the demo samples {cfg.sample_num_batches_per_epoch} batches per epoch; "
            f"trl_jpeg_train.py runs trl's default of {TRL_BATCHES_PER_EPOCH}"
        )
    layer = {
        k: getattr(cfg, k) for k in ("mixed_precision", "sample_num_steps", "train_batch_size")
    }
    per_epoch = cfg.sample_batch_size * TRL_BATCHES_PER_EPOCH
    extra = [*trl_args(layer), "--save-every", str(every), "--reward-url", url]
    extra += ["--scorer", SCORER, "--max-minutes", str(minutes)]
    got = run_trl(
        model_dir, seed, samples // per_epoch, cfg.sample_batch_size, extra, work, cfg.prompts
    )
    save = got["weights"].path
    done = len(got["epochs"])
    points = [
        (e, Weights(kind="lora", path=save / f"epoch_{e}", lora_scale=got["weights"].lora_scale))
        for e in range(every, done + 1, every)
    ]
    return {
        "out": save,
        "rows": got["epochs"],
        "per_epoch": per_epoch,
        "checkpoints": (got["sampler"], points),
        "keys": got["config"],
    }


def first_gain(run: dict[str, Any], gain: float) -> int | None:
    """Samples at the first checkpoint whose held-out fidelity is `gain` above the base's."""
    floor = run["before"]["classifier_held_out"] + gain - 1e-9
    return next((c["samples"] for c in run["curve"] if c["classifier_held_out"] >= floor), None)


def print_report(doc: dict[str, Any], gain: float = 0.15) -> None:
    print(
        f"\nheld-out / seen fidelity by the classifier; target held-out {doc['target']}, "
        f"or +{gain} over the base model"
    )
    for name, runs in doc["runs"].items():
        for r in runs:
            s, t = r["samples_to_target"], r["train_s_to_target"]
            curve = " ".join(
                f"{c['samples']}:{c['classifier_held_out']:.2f}/{c['classifier_seen']:.2f}"
                for c in r["curve"]
            )
            b = r["before"]
            print(
                f"{name:<13}seed {r['seed']} before {b['classifier_held_out']:.3f}"
                f"/{b['classifier_seen']:.3f} -> to target "
                f"{'never' if s is None else f'{s} samples, {t / 60:.1f} min'}, to +{gain} "
                f"{first_gain(r, gain) or 'never'} "
                f"({r['samples_total']} samples in {r['train_s_total'] / 60:.1f} min)  "
                f"samples:held-out/seen {curve}"
            )
    for name, runs in doc["runs"].items():
        done = [r for r in runs if r["curve"]]  # a run stopped before its first checkpoint
        if done:
            last = [r["curve"][-1] for r in done]
            held = [
                c["classifier_held_out"] - r["before"]["classifier_held_out"]
                for c, r in zip(last, done, strict=True)
            ]
            seen = [c["classifier_seen"] for c in last]
            print(
                f"{name}: final held-out gain {statistics.fmean(held):+.3f} (spread "
                f"{max(held) - min(held):.3f}), seen after {statistics.fmean(seen):.3f}; "
                f"reached the target {sum(r['samples_to_target'] is not None for r in runs)}"
                f"/{len(runs)}, +{gain} {sum(first_gain(r, gain) is not None for r in runs)}"
                f"/{len(runs)}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "tiny-sd")
    ap.add_argument("--methods", default=",".join([*METHODS, TRL]))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=1920, help="the demo's 120 epochs x 16")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall time cap per run")
    ap.add_argument("--eval-every", type=int, default=10, help="epochs between checkpoints")
    ap.add_argument("--eval-seeds", type=int, default=6, help="held-out seeds per prompt")
    ap.add_argument("--target", type=float, default=0.9, help="held-out classifier fidelity")
    ap.add_argument("--out", default="forward_process_fidelity")
    ap.add_argument("--gain", type=float, default=0.15, help="report: held-out gain to count")
    ap.add_argument("--report", type=Path, default=None)
    args = ap.parse_args()
    if args.report is not None:
        print_report(json.loads(args.report.read_text()), args.gain)
        return
    stop_on_sigterm()
    from ddpo.server_process import RewardServerProcess

    names = chosen_methods(args.methods)
    args.model_dir = args.model_dir.resolve()  # trl's child runs in benchmarks/
    seeds = eval_seeds(args.eval_seeds)
    doc = header(names, args.model_dir, target=args.target, minutes_cap=args.minutes)
    path = RESULTS_DIR / f"{args.out}.json"
    work = Path(tempfile.mkdtemp(prefix="ddpo-fp-fidelity-"))
    before: dict[Sampler, dict] = {}
    with RewardServerProcess([SCORER], log_file=work / "server.log", extra_env=child_env()) as srv:
        for seed, name in rotated(names, args.first_seed, args.seeds):
            common = (seed, args.samples, args.minutes, args.eval_every, work)
            if name == TRL:
                run = trl_fidelity_run(args.model_dir, srv.url, *common)
            else:
                run = ours_run(name, args.model_dir, srv.url, *common)
            result = {
                "seed": seed,
                "load": os.getloadavg()[0],
                **judge(run, args.model_dir, seeds, before, args.target, run["per_epoch"]),
            }
            shutil.rmtree(run["out"], ignore_errors=True)
            held = result["curve"][-1]["classifier_held_out"] if result["curve"] else None
            print(
                f"{name} seed {seed}: held-out {held}, to target "
                f"{result['samples_to_target']} samples, {result['samples_total']} in "
                f"{result['train_s_total'] / 60:.1f} min, load {result['load']:.1f}",
                flush=True,
            )
            record(doc, path, name, result)
    finish(doc, path, lambda d: print_report(d, args.gain), work)


if __name__ == "__main__":
    main()
