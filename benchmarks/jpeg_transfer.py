"""JPEG compressibility on a model no recipe was tuned on: ours vs trl's DDPOTrainer.

Issue 13 item 3. On one pipeline (default models/tiny-sd-b, kept for confirming
recipes, never for tuning), 3 fixed prompts, a budget of 360 samples per run:

- ours: `ddpo train` with TrainConfig defaults + an optional preset TOML
  (--preset) + --set overrides, rewards over HTTP from a reward server
  subprocess (scorer jpeg_compressibility);
- trl: trl 0.19.1's DDPOTrainer at its defaults (benchmarks/trl_jpeg_train.py in
  benchmarks/.venv-trl), JPEG compressibility computed in-process the same way.

Each side runs once per seed, in alternating order (ours-trl, trl-ours, ...) so
machine noise hits both. The budget sets only the batch layout: the sample batch
is --sample-batch-size (6) unless the preset or --set gives one, epochs = 360 /
(sample_batch_size x sample_num_batches_per_epoch), which must divide exactly.
On a CPU both sides train with mixed_precision "no" (see budget());
--sample-num-steps / --train-batch-size set those for both sides (a CPU budget).

The figure: mean JPEG size (kB) of a held-out set (the 3 prompts x --eval-seeds
fixed seeds, benchmarks/jpeg_eval.py), sampled with the run's sampler settings
from the base weights and from the weights the run saved. gain = before - after:
positive means smaller JPEGs, what compressibility rewards.

    nice -n 10 python benchmarks/jpeg_transfer.py                      # defaults, 3 seeds
    nice -n 10 python benchmarks/jpeg_transfer.py --preset configs/X.toml --out jpeg_transfer-X
    python benchmarks/jpeg_transfer.py --report benchmarks/results/jpeg_transfer.json
    python benchmarks/jpeg_transfer.py --quick --sides ours --model-dir DIR   # smoke test

Writes benchmarks/results/<--out>.json (default jpeg_transfer).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    OUR_PACKAGES,
    REPO,
    RESULTS_DIR,
    child_env,
    machine_info,
    stop_on_sigterm,
    thread_env_label,
    trl_python,
    trl_versions,
    versions,
)
from jpeg_eval import Sampler, Weights, eval_seeds, jpeg_sizes_kb

#: Three of shared.shapes' prompts: every shape, colour and background differs.
PROMPTS = [
    "a red circle on a white background",
    "a blue square on a black background",
    "a yellow triangle on a gray background",
]
#: Keys the benchmark sets itself; a preset must not.
RESERVED = {
    "pretrained_model",
    "prompts",
    "prompts_file",
    "rewards",
    "output_dir",
    "seed",
    "num_epochs",
}
SCORER = "jpeg_compressibility"


def toml_value(value: Any) -> str:
    """A TOML value (strings, numbers, booleans, lists, inline tables): config files we write."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def budget(
    sample_batch_size: int,
    cpu: bool,
    sample_num_steps: int | None = None,
    train_batch_size: int | None = None,
) -> dict[str, Any]:
    """The layer under any preset, shared by both sides: batch layout and device.

    On a CPU mixed_precision is "no": fp16 there is emulated, 26x slower per UNet pass
    (tiny-sd-b, batch 12: 2.10 s vs 0.08 s), which would put 360 samples out of reach.
    sample_num_steps / train_batch_size: only when given (a CPU budget); default:
    each trainer's own (50 steps, train batch 1 for both).
    """
    keys: dict[str, Any] = {"sample_batch_size": sample_batch_size}
    if cpu:
        keys["mixed_precision"] = "no"
    if sample_num_steps is not None:
        keys["sample_num_steps"] = sample_num_steps
    if train_batch_size is not None:
        keys["train_batch_size"] = train_batch_size
    return keys


def trl_args(base: dict[str, Any]) -> list[str]:
    """The same budget layer for trl_jpeg_train.py (sample_batch_size goes on its own)."""
    flags = {
        "mixed_precision": "--mixed-precision",
        "sample_num_steps": "--sample-num-steps",
        "train_batch_size": "--train-batch-size",
    }
    return [a for k, flag in flags.items() if k in base for a in (flag, str(base[k]))]


def recipe(preset: Path | None, overrides: list[str], base: dict[str, Any]) -> dict[str, Any]:
    """Keys ours trains with beyond TrainConfig defaults: PPO (as trl's DDPO, unless the
    preset or --set names another algorithm), budget(), then the preset, then --set."""
    from trainer.config import apply_overrides

    data = {"train_algorithm": "ppo", **base}
    if preset is not None:
        given = tomllib.loads(preset.read_text(encoding="utf-8"))
        clash = sorted(RESERVED & given.keys())
        if clash:
            raise SystemExit(f"{preset}: the benchmark sets {', '.join(clash)} itself")
        data.update(given)
    return apply_overrides(data, list(overrides))


def layout(keys: dict[str, Any], samples: int) -> tuple[int, int]:
    """(samples per epoch, epochs) for a budget of `samples` on one process."""
    from trainer.config import TrainConfig

    def get(name: str) -> int:
        return int(keys.get(name, TrainConfig.model_fields[name].default))

    per_epoch = get("sample_batch_size") * get("sample_num_batches_per_epoch")
    if samples % per_epoch:
        raise SystemExit(f"{samples} samples are not a whole number of epochs of {per_epoch}")
    return per_epoch, samples // per_epoch


def our_config(keys: dict[str, Any], model_dir: Path, out: Path, url: str, seed: int, epochs: int):
    """The full `ddpo train` config, checked by TrainConfig before any process starts."""
    from trainer.config import build_config

    data = {
        "pretrained_model": str(model_dir),
        "prompts": PROMPTS,
        "output_dir": str(out),
        "seed": seed,
        "num_epochs": epochs,
        "save_freq": epochs,
        "num_checkpoint_limit": 1,
        "log_images_every": 0,
        **keys,
        "rewards": [{"url": url, "scorer": SCORER, "mode": "sync"}],
    }
    return build_config(data), data


def train_from_data(
    data: dict[str, Any], stem: Path, out: Path, timeout_s: float | None = None
) -> list[dict[str, Any]]:
    """Write `data` to STEM.toml, run `ddpo train` (log: STEM.log), return its metrics rows;
    stopped after `timeout_s`, the epochs it finished (checkpoints are written atomically)."""
    path = stem.with_suffix(".toml")
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in data.items()))
    cmd = [str(Path(sys.executable).with_name("ddpo")), "train", "--config", str(path)]
    with stem.with_suffix(".log").open("wb") as log:
        try:
            proc = subprocess.run(
                [*cmd, "--log-level", "warning"],
                env=child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=timeout_s,
            )
            failed = proc.returncode != 0
        except subprocess.TimeoutExpired:
            failed = False
    if failed:
        tail = stem.with_suffix(".log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{stem.name}: ddpo train failed ({proc.returncode}):\n{tail}")
    metrics = out / "metrics.jsonl"  # absent when stopped before its first epoch
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return [json.loads(ln) for ln in lines if ln.strip().endswith("}")]


def run_ours(
    keys: dict[str, Any], model_dir: Path, url: str, seed: int, epochs: int, work: Path
) -> dict[str, Any]:
    """One `ddpo train`; returns its per-epoch figures, sampler and saved weights."""
    out = work / f"ours-seed{seed}"
    cfg, data = our_config(keys, model_dir, out, url, seed, epochs)
    t0 = time.perf_counter()
    rows = train_from_data(data, work / f"ours-seed{seed}", out)
    keep = ("reward_mean", "reward_std", "approx_kl", "clipfrac", "kl_to_reference")
    if cfg.use_lora:
        weights = Weights(kind="lora", path=out / "lora", lora_scale=cfg.lora_alpha / cfg.lora_rank)
    else:
        weights = Weights(kind="unet", path=out / "unet")
    return {
        "train_s": time.perf_counter() - t0,
        "epochs": [{k: r[k] for k in ("epoch", *keep) if k in r} for r in rows],
        "sampler": Sampler(
            steps=cfg.sample_num_steps, guidance=cfg.sample_guidance_scale, eta=cfg.sample_eta
        ),
        "weights": weights,
        "config": json.loads(cfg.model_dump_json()),
    }


def run_trl(
    model_dir: Path,
    seed: int,
    epochs: int,
    sample_batch_size: int,
    extra: list[str],
    work: Path,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """One trl DDPOTrainer process at its defaults; same figures as run_ours."""
    save, out = work / f"trl-seed{seed}", work / f"trl-seed{seed}.json"
    cmd = [
        str(trl_python()),
        str(BENCH_DIR / "trl_jpeg_train.py"),
        "--model-dir",
        str(model_dir),
        "--prompts",
        json.dumps(prompts or PROMPTS),
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--sample-batch-size",
        str(sample_batch_size),
        "--save-dir",
        str(save),
        "--out",
        str(out),
        *extra,
    ]
    t0 = time.perf_counter()
    with (work / f"trl-seed{seed}.log").open("wb") as log:
        proc = subprocess.run(
            cmd, env=child_env(), stdout=log, stderr=subprocess.STDOUT, cwd=BENCH_DIR, check=False
        )
    if proc.returncode != 0:
        tail = (work / f"trl-seed{seed}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"trl run failed ({proc.returncode}):\n{tail}")
    got = json.loads(out.read_text())
    s = got["sampler"]
    return {
        "train_s": time.perf_counter() - t0,
        "epochs": got["epochs"],
        "sampler": Sampler(steps=s["steps"], guidance=s["guidance"], eta=s["eta"]),
        "weights": Weights(kind="lora", path=save, lora_scale=got["lora_scale"]),
        "config": got["config"],
    }


def spread(values: list[float]) -> float:
    return max(values) - min(values) if values else float("nan")


def summarize_side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    gains = [r["gain_kb"] for r in runs]
    mean = statistics.fmean(gains)
    return {
        "gain_kb_per_seed": gains,
        "gain_kb_mean": mean,
        "gain_kb_spread": spread(gains),
        # issue 13 item 3: at least 0.1 kB and at least twice the spread between seeds
        "learns": mean >= 0.1 and mean >= 2 * spread(gains),
    }


def print_report(results: dict[str, list[dict[str, Any]]], summary: dict[str, Any]) -> None:
    print("\nheld-out mean JPEG size, kB (gain = before - after: > 0 is more compressible)")
    print(f"{'side':<6}{'seed':>5}{'before':>9}{'after':>9}{'gain':>9}{'train min':>11}")
    for side, runs in results.items():
        for r in runs:
            print(
                f"{side:<6}{r['seed']:>5}{r['before_kb']:>9.3f}{r['after_kb']:>9.3f}"
                f"{r['gain_kb']:>+9.3f}{r['train_s'] / 60:>11.1f}"
            )
    for side, s in summary.items():
        print(
            f"{side}: gain mean {s['gain_kb_mean']:+.3f} kB, spread {s['gain_kb_spread']:.3f} "
            f"kB over {len(s['gain_kb_per_seed'])} seeds; >= 0.1 and >= 2 x spread: "
            f"{'yes' if s['learns'] else 'no'}"
        )
    for side, runs in results.items():
        keys = [
            k for k in ("reward_mean", "approx_kl", "kl_to_reference") if k in runs[0]["epochs"][0]
        ]
        print(f"\n{side}: per-epoch training figures, seeds {[r['seed'] for r in runs]}")
        print(f"{'epoch':>5}  " + "  ".join(f"{k:>{9 * len(runs)}}" for k in keys))
        for e in range(len(runs[0]["epochs"])):
            cells = [
                "".join(f"{r['epochs'][e].get(k, float('nan')):>9.4g}" for r in runs) for k in keys
            ]
            print(f"{e:>5}  " + "  ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "tiny-sd-b")
    ap.add_argument("--preset", type=Path, default=None, help="a TOML of TrainConfig keys")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first .. first + n - 1")
    ap.add_argument("--samples", type=int, default=360, help="trained samples per run")
    ap.add_argument("--sample-batch-size", type=int, default=6, help="unless preset/--set sets it")
    ap.add_argument("--sample-num-steps", type=int, default=None, help="both sides; CPU budgets")
    ap.add_argument("--train-batch-size", type=int, default=None, help="both sides; CPU budgets")
    ap.add_argument("--eval-seeds", type=int, default=12, help="held-out seeds per prompt")
    ap.add_argument("--sides", default="ours,trl", help="ours,trl | ours | trl")
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 4 steps: smoke test")
    ap.add_argument("--out", default="jpeg_transfer", help="results file name, no .json")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--report", type=Path, default=None, help="print the tables of a results JSON")
    args = ap.parse_args()
    if args.report is not None:
        data = json.loads(args.report.read_text())
        runs = {side: r for side, r in data["runs"].items() if r}
        print_report(runs, {side: summarize_side(r) for side, r in runs.items()})
        print(f"complete: {data['complete']}")
        return
    stop_on_sigterm()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    # Absolute: trl's child runs in a work directory, where a relative path reads as a hub id.
    args.model_dir = args.model_dir.resolve()
    if args.quick:
        args.seeds, args.samples, args.sample_batch_size, args.eval_seeds = 1, 8, 2, 1
        args.sample_num_steps = 4
    if "trl" in sides and not trl_python().exists():
        sys.exit(f"{trl_python()} is missing: run benchmarks/setup_trl_venv.sh first")
    import torch

    base = budget(
        args.sample_batch_size,
        not torch.cuda.is_available(),
        args.sample_num_steps,
        args.train_batch_size,
    )
    keys = recipe(args.preset, args.overrides, base)
    trl_extra = trl_args(base)
    per_epoch, epochs = layout(keys, args.samples)
    trl_epochs = args.samples // (2 * args.sample_batch_size)  # trl default: 2 batches per epoch
    print(f"ours: {per_epoch} samples/epoch x {epochs} epochs = {args.samples}; keys {keys}")
    if "trl" in sides:
        print(
            f"trl: {args.sample_batch_size} x 2 batches x {trl_epochs} epochs = {args.samples}; "
            f"{' '.join(trl_extra)}"
        )

    from ddpo.server_process import RewardServerProcess

    head = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_info(),
        "versions": {
            "ours": versions(OUR_PACKAGES),
            **({"trl_venv": trl_versions()} if "trl" in sides else {}),
        },
        "child_thread_env": thread_env_label(child_env()),
        "pipeline": str(args.model_dir),
        "prompts": PROMPTS,
        "budget": {
            "samples": args.samples,
            "ours_samples_per_epoch": per_epoch,
            "ours_epochs": epochs,
            "trl_epochs": trl_epochs,
        },
        "budget_layer_both_sides": base,
        "trl_args": trl_extra,
        "ours_keys_beyond_defaults": keys,
        "preset": str(args.preset) if args.preset else None,
    }
    work = Path(tempfile.mkdtemp(prefix="ddpo-jpeg-transfer-"))
    print(f"logs and weights under {work} (removed at the end)", flush=True)
    seeds = eval_seeds(args.eval_seeds)
    before: dict[Sampler, list[float]] = {}
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}

    def write(complete: bool) -> Path:
        """After every run, so a run stopped half-way still leaves its figures."""
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"{args.out}.json"
        data = {
            **head,
            "complete": complete,
            "loadavg_now": os.getloadavg(),
            "eval": {
                "seeds": seeds,
                "before_kb": {json.dumps(k.model_dump()): v for k, v in before.items()},
            },
            "summary": {side: summarize_side(runs) for side, runs in results.items() if runs},
            "runs": results,
        }
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    with RewardServerProcess(
        [SCORER], log_file=work / "server.log", extra_env=child_env({"DDPO_LOG_FORMAT": "text"})
    ) as server:
        for i, seed in enumerate(range(args.first_seed, args.first_seed + args.seeds)):
            for side in sides if i % 2 == 0 else sides[::-1]:
                if side == "ours":
                    run = run_ours(keys, args.model_dir, server.url, seed, epochs, work)
                else:
                    run = run_trl(
                        args.model_dir, seed, trl_epochs, args.sample_batch_size, trl_extra, work
                    )
                sampler, weights = run.pop("sampler"), run.pop("weights")
                if sampler not in before:
                    before[sampler] = jpeg_sizes_kb(args.model_dir, PROMPTS, seeds, sampler)
                after = jpeg_sizes_kb(args.model_dir, PROMPTS, seeds, sampler, weights)
                b, a = statistics.fmean(before[sampler]), statistics.fmean(after)
                run.update(seed=seed, before_kb=b, after_kb=a, gain_kb=b - a)
                run.update(after_sizes_kb=after, sampler=sampler.model_dump(), weights=weights.kind)
                print(
                    f"seed {seed} {side:>4}: {b:.3f} -> {a:.3f} kB, gain {b - a:+.3f} kB, "
                    f"train {run['train_s'] / 60:.1f} min, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                results[side].append(run)
                write(complete=False)

    print_report(results, {side: summarize_side(runs) for side, runs in results.items()})
    print(f"wrote {write(complete=True)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
