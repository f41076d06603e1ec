"""Epoch time, ours vs trl's DDPOTrainer, measured alternately in one invocation.

Ours: `ddpo train` with rewards over HTTP from a reward server subprocess
(jpeg_compressibility). trl: benchmarks/trl_ddpo_epoch.py in benchmarks/.venv-trl
(make it with benchmarks/setup_trl_venv.sh), reward computed in-process. Both
load the same pipeline directory with the same settings (_common.SETTINGS); by
default two pipelines in one run: the random-weight 64 px SD pipeline
(benchmarks/.cache) and the trained built-in model models/tiny-sd
(v-prediction, 64 px). Each round runs one process of each side per pipeline,
in alternating order; every process's first epoch is a warm-up and is left out.

Children run with the thread defaults a user has (no OMP_* variables: all
cores, libgomp's wait policy); `--single-thread` gives each one intra-op
thread, as the figures of 2026-11-25 had.

    python benchmarks/compare_trl.py --rounds 2 --epochs 4

Prints per pipeline the phase medians of each, ours/trl (pooled medians, minima,
and per round) and our reward-wait share of the epoch; writes
benchmarks/results/compare_trl.json.
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
from pathlib import Path

from _common import (
    BENCH_DIR,
    OUR_PACKAGES,
    REPO,
    SAMPLE_SIZE,
    SETTINGS,
    build_bench_pipeline,
    child_env,
    default_pipeline_dir,
    machine_info,
    our_epochs,
    stop_on_sigterm,
    summarize,
    thread_env_label,
    trl_python,
    trl_versions,
    versions,
    write_result,
)
from epoch_breakdown import run_ours

PHASES = ["sampling_s", "reward_wait_s", "training_s", "overhead_s"]


def run_trl(
    model_dir: Path, epochs: int, workdir: Path, seed: int, env: dict[str, str]
) -> list[dict[str, float]]:
    out = workdir / f"trl-{time.monotonic_ns()}.json"
    cmd = [
        str(trl_python()),
        str(BENCH_DIR / "trl_ddpo_epoch.py"),
        "--model-dir",
        str(model_dir),
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    log = out.with_suffix(".log")
    with log.open("wb") as fh:
        proc = subprocess.run(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir, check=False
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"trl run failed ({proc.returncode}):\n{tail}")
    rows = json.loads(out.read_text())["epochs"][1:]  # first epoch: warm-up
    for r in rows:  # same key names as ours
        r["reward_wait_s"] = r.pop("reward_s", 0.0)
    return rows


def phase_table(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: summarize([e[k] for e in rows]) for k in [*PHASES, "total_s"]}


def report(name: str, ours: list[dict], trl: list[dict], rounds: list[dict]) -> dict[str, object]:
    """Print one pipeline's table and ratios; return them for the JSON."""
    ours_t, trl_t = phase_table(ours), phase_table(trl)
    ratio = ours_t["total_s"]["median"] / trl_t["total_s"]["median"]
    ratio_min = ours_t["total_s"]["min"] / trl_t["total_s"]["min"]
    round_ratios = [x["ours_median_s"] / x["trl_median_s"] for x in rounds]
    wait_share = [e["reward_wait_s"] / e["total_s"] for e in ours]

    print(f"\n{name}: epoch time, {len(ours)} + {len(trl)} timed epochs ({len(rounds)} rounds)")
    print(f"{'phase':<14}{'ours med s':>11}{'trl med s':>11}{'ours min':>10}{'trl min':>10}")
    for k in [*PHASES, "total_s"]:
        print(
            f"{k.removesuffix('_s'):<14}{ours_t[k]['median']:>11.3f}{trl_t[k]['median']:>11.3f}"
            f"{ours_t[k]['min']:>10.3f}{trl_t[k]['min']:>10.3f}"
        )
    print(f"ours/trl: pooled medians {ratio:.3f}, minima {ratio_min:.3f}   target <= 1")
    print(f"ours/trl per round: {', '.join(f'{x:.3f}' for x in round_ratios)}")
    print(
        f"our reward wait: median {100 * statistics.median(wait_share):.3f}% of the epoch, "
        f"max {100 * max(wait_share):.3f}%"
    )
    return {
        "ours": {"phases": ours_t, "epochs": ours},
        "trl": {"phases": trl_t, "epochs": trl},
        "ratio_ours_over_trl_pooled_median": ratio,
        "ratio_ours_over_trl_min": ratio_min,
        "ratio_per_round": round_ratios,
        "rounds": rounds,
        "ours_reward_wait_share": summarize(wait_share),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4, help="per process; the first is a warm-up")
    ap.add_argument(
        "--model-dir",
        type=Path,
        action="append",
        default=None,
        help="pipeline directory (repeatable); default: the random 64 px one and models/tiny-sd",
    )
    ap.add_argument(
        "--random-size",
        type=int,
        default=SAMPLE_SIZE,
        help="UNet sample_size of the default random pipeline: 32 -> 64 px, 16 -> 32 px images",
    )
    ap.add_argument(
        "--single-thread",
        action="store_true",
        help="OMP_NUM_THREADS=1 for every child (the 2026-11-25 figures); default: user's env",
    )
    ap.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for our trainer only (e.g. OMP_WAIT_POLICY=ACTIVE), repeatable",
    )
    ap.add_argument("--out", default="compare_trl")
    args = ap.parse_args()
    stop_on_sigterm()
    if not trl_python().exists():
        sys.exit(f"{trl_python()} is missing: run benchmarks/setup_trl_venv.sh first")

    from ddpo.server_process import RewardServerProcess

    info = machine_info()
    # Absolute: trl's child runs in a work directory, where a relative path reads as a hub id.
    model_dirs = (
        [d.resolve() for d in args.model_dir]
        if args.model_dir
        else [
            build_bench_pipeline(default_pipeline_dir(args.random_size), args.random_size),
            REPO / "models" / "tiny-sd",
        ]
    )
    names = [d.name for d in model_dirs]
    env = child_env(single_thread=args.single_thread)
    ours_env = {**env, **dict(kv.split("=", 1) for kv in args.ours_env)}
    work = Path(tempfile.mkdtemp(prefix="ddpo-compare-"))
    ours: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    trl: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    rounds: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    with RewardServerProcess(
        ["jpeg_compressibility"],
        log_file=work / "server.log",
        extra_env=child_env({"DDPO_LOG_FORMAT": "text"}, single_thread=args.single_thread),
    ) as server:
        for r in range(args.rounds):
            for p, (name, model_dir) in enumerate(zip(names, model_dirs, strict=True)):
                order = ["ours", "trl"] if (r + p) % 2 == 0 else ["trl", "ours"]
                got: dict[str, list[dict[str, float]]] = {}
                for who in order:
                    t0 = time.perf_counter()
                    if who == "ours":
                        out = run_ours(
                            model_dir, server.url, args.epochs, work, seed=r, env=ours_env
                        )
                        got[who] = our_epochs(out / "metrics.jsonl", skip=1)
                    else:
                        got[who] = run_trl(model_dir, args.epochs, work, seed=r, env=env)
                    med = statistics.median(e["total_s"] for e in got[who])
                    wall = time.perf_counter() - t0
                    print(
                        f"round {r} {name} {who:>4}: median epoch {med:.2f}s "
                        f"(process {wall:.0f}s, load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
                ours[name] += got["ours"]
                trl[name] += got["trl"]
                o = statistics.median(e["total_s"] for e in got["ours"])
                t = statistics.median(e["total_s"] for e in got["trl"])
                rounds[name].append(
                    {"round": r, "order": order, "ours_median_s": o, "trl_median_s": t}
                )

    results = {n: report(n, ours[n], trl[n], rounds[n]) for n in names}
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    path = write_result(
        args.out,
        {
            "command": command,
            "machine": info,
            "loadavg_at_end": os.getloadavg(),
            "versions": {"ours": versions(OUR_PACKAGES), "trl_venv": trl_versions()},
            "settings": SETTINGS,
            "child_thread_env": thread_env_label(env),
            "ours_extra_env": dict(kv.split("=", 1) for kv in args.ours_env),
            "pipelines": {n: str(d) for n, d in zip(names, model_dirs, strict=True)},
            "epochs_per_process": args.epochs,
            "warmup_epochs_dropped_per_process": 1,
            "results": results,
        },
    )
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
