"""Where a DDPO epoch's time goes: sampling, reward wait, training, overhead.

Runs `ddpo train` (LoRA, fp32, CPU) on a tiny random-weight SD pipeline making
64 px images: sample batch 6 x 2 batches, 20 DDIM steps, train batch 3, rewards
over HTTP from a real reward server subprocess (jpeg_compressibility). Phase
times come from the run's metrics.jsonl; the first epoch of each run is a
warm-up and is left out. Overhead = epoch total - (sampling + reward wait +
training): stat tracking, gathers and the final checkpoint.

    python benchmarks/epoch_breakdown.py --epochs 8 --repeats 2
    python benchmarks/epoch_breakdown.py --profile   # also py-spy: hotspots per phase

Writes benchmarks/results/epoch_breakdown.json (with the per-phase profile under "profile").
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    OUR_PACKAGES,
    REPO,
    SETTINGS,
    build_bench_pipeline,
    child_env,
    default_pipeline_dir,
    machine_info,
    our_epochs,
    ours_config_toml,
    stop_on_sigterm,
    summarize,
    thread_env_label,
    versions,
    write_result,
)

PHASES = ["sampling_s", "reward_wait_s", "training_s", "overhead_s"]


def run_ours(
    model_dir: Path,
    server_url: str,
    epochs: int,
    workdir: Path,
    seed: int = 0,
    profiler: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    **config: Any,
) -> Path:
    """One `ddpo train` process; returns its output directory.

    env: default child_env(), the thread defaults a user has; timeout_s: kill it
    (subprocess.TimeoutExpired) past that; config: more ours_config_toml
    arguments (scorer, prompts_file).
    """
    out = workdir / f"ours-{time.monotonic_ns()}"
    cfg = workdir / f"{out.name}.toml"
    cfg.write_text(ours_config_toml(model_dir, out, server_url, epochs, seed, **config))
    ddpo = Path(sys.executable).with_name("ddpo")
    cmd = [str(ddpo), "train", "--config", str(cfg), "--log-level", "warning"]
    if profiler:
        # py-spy needs a Python entry point it can follow: the CLI module itself.
        cmd = [*profiler, "--", sys.executable, "-m", "ddpo.cli", *cmd[1:]]
    log = workdir / f"{out.name}.log"
    with log.open("wb") as fh:
        proc = subprocess.run(
            cmd,
            env=env or child_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=timeout_s,
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"ddpo train failed ({proc.returncode}):\n{tail}")
    return out


def print_table(title: str, rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    totals = [r["total_s"] for r in rows]
    med_total = summarize(totals)["median"]
    print(f"\n{title} ({len(rows)} epochs)")
    print(f"{'phase':<14}{'min s':>9}{'median s':>10}{'max s':>9}{'share':>8}")
    table = {}
    for key in [*PHASES, "total_s"]:
        st = summarize([r[key] for r in rows])
        st["share_of_median_total"] = st["median"] / med_total
        table[key] = st
        name = key.removesuffix("_s")
        share = f"{100 * st['share_of_median_total']:.1f}%" if key != "total_s" else ""
        print(f"{name:<14}{st['min']:>9.3f}{st['median']:>10.3f}{st['max']:>9.3f}{share:>8}")
    return table


# -- py-spy profile, split by phase ------------------------------------------------------------

#: (phase, frame-name pattern): the first frame from the root that matches decides.
_PHASE_FRAMES = [
    ("sampling", re.compile(r"^sample_trajectories ")),
    ("reward_wait", re.compile(r"^gather_results ")),
    ("training", re.compile(r"^ppo_update ")),
    ("checkpoint", re.compile(r"^(save_checkpoint|save_lora) ")),
    ("logging", re.compile(r"^write_epoch ")),
    ("setup", re.compile(r"^(load_family|add_lora|Accelerator\.__init__|check_ready) ")),
    ("bg: PNG encode", re.compile(r"^_encode_items ")),
    ("bg: reward client loop", re.compile(r"^BaseEventLoop\.run_forever ")),
]
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _split_frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f and not f.startswith(("thread ", "process "))]


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "/work/main/", str(REPO) + "/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def _is_ours(frame: str) -> bool:
    return "trainer/" in frame or "shared/" in frame


def analyse_profile(raw: Path, top: int = 12) -> dict[str, object]:
    """Self time (leaf frames) and time by our own deepest function, per phase."""
    leaf: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    ours: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    phase_total: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _split_frames(stack)
        if not frames:
            continue
        phase = "other"
        for f in frames:
            hit = next((p for p, rx in _PHASE_FRAMES if rx.match(f)), None)
            if hit:
                phase = hit
                break
        phase_total[phase] += n
        leaf[phase][_short(frames[-1])] += n
        own = [f for f in frames if _is_ours(f)]
        ours[phase][_short(own[-1]) if own else "(no project frame)"] += n
    total = sum(phase_total.values()) or 1
    out: dict[str, object] = {"samples": total, "phases": {}}
    for phase, n in phase_total.most_common():
        out["phases"][phase] = {
            "samples": n,
            "share": n / total,
            "top_self": [
                {"frame": k, "share_of_phase": v / n} for k, v in leaf[phase].most_common(top)
            ],
            "top_project_frame": [
                {"frame": k, "share_of_phase": v / n} for k, v in ours[phase].most_common(top)
            ],
        }
    return out


def print_profile(prof: dict[str, object], top: int = 8) -> None:
    print(f"\npy-spy profile of the trainer process ({prof['samples']} samples, all threads)")
    for phase, data in prof["phases"].items():
        print(f"\n[{phase}] {100 * data['share']:.1f}% of samples")
        print("  self time (leaf frame):")
        for row in data["top_self"][:top]:
            print(f"    {100 * row['share_of_phase']:5.1f}%  {row['frame']}")
        print("  by deepest trainer/ or shared/ frame:")
        for row in data["top_project_frame"][:top]:
            print(f"    {100 * row['share_of_phase']:5.1f}%  {row['frame']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8, help="epochs per run (first is warm-up)")
    ap.add_argument("--repeats", type=int, default=2, help="separate `ddpo train` runs")
    ap.add_argument("--model-dir", type=Path, default=None, help="default: benchmarks/.cache")
    ap.add_argument("--profile", action="store_true", help="one more run under py-spy")
    ap.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument(
        "--single-thread",
        action="store_true",
        help="OMP_NUM_THREADS=1 for every child (the 2026-11-25 figures); default: user's env",
    )
    ap.add_argument("--out", default="epoch_breakdown")
    args = ap.parse_args()
    env = child_env(single_thread=args.single_thread)
    stop_on_sigterm()

    from ddpo.server_process import RewardServerProcess

    info = machine_info()
    # A given directory is used as it is (build_bench_pipeline would overwrite it).
    model_dir = args.model_dir or build_bench_pipeline(default_pipeline_dir())
    work = Path(tempfile.mkdtemp(prefix="ddpo-bench-"))
    runs = []
    profile = None
    with RewardServerProcess(
        ["jpeg_compressibility"],
        log_file=work / "server.log",
        extra_env=child_env({"DDPO_LOG_FORMAT": "text"}, single_thread=args.single_thread),
    ) as server:
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out = run_ours(model_dir, server.url, args.epochs, work, seed=r, env=env)
            wall = time.perf_counter() - t0
            rows = our_epochs(out / "metrics.jsonl", skip=1)
            runs.append({"run": r, "process_wall_s": wall, "epochs": rows})
            print(f"run {r}: {len(rows)} timed epochs, process wall {wall:.1f}s")
        if args.profile:
            if not args.py_spy:
                sys.exit("--profile needs py-spy (pip install py-spy) on PATH or --py-spy")
            raw = work / "profile.txt"
            cmd = [args.py_spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw)]
            run_ours(model_dir, server.url, args.epochs, work, seed=99, profiler=cmd, env=env)
            profile = analyse_profile(raw)

    rows = [row for run in runs for row in run["epochs"]]
    table = print_table("ours: `ddpo train`, CPU, tiny SD 64 px", rows)
    if profile:
        print_profile(profile)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    path = write_result(
        args.out,
        {
            "command": command,
            "machine": info,
            "versions": versions(OUR_PACKAGES),
            "settings": {**SETTINGS, "image_px": 64, "reward": "jpeg_compressibility over HTTP"},
            "child_thread_env": thread_env_label(env),
            "epochs_per_run": args.epochs,
            "warmup_epochs_dropped_per_run": 1,
            "phases": table,
            "runs": runs,
            "profile": profile,
        },
    )
    print(f"\nwrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
