"""One epoch phase by phase, ours vs trl's DDPOTrainer: aten operator counts and self CPU time.

For each pipeline (default: the random 64 px SD pipeline and models/tiny-sd), one
`ddpo train` process (rewards over HTTP, jpeg_compressibility) and one trl
process (benchmarks/trl_ddpo_epoch.py in benchmarks/.venv-trl), order
alternating, each run for `--epochs` epochs with every epoch after the first
under `torch.profiler` (benchmarks/_op_profile.py). Ours profiles
`trainer.train.sample_epoch` (sampling, decode included) and `update` (the PPO
update, the old-log-prob probe or recompute included); trl its
`_generate_samples` and `_train_batched_samples`. Children get `--threads`
intra-op threads (default 1: the profile is about work done, not threading).

    python benchmarks/phase_profile.py --epochs 2

Prints per pipeline and phase the operator categories (calls, self CPU s) of
each side and the operators whose self time differs most; writes
benchmarks/results/phase_profile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    BENCH_DIR,
    REPO,
    build_bench_pipeline,
    child_env,
    default_pipeline_dir,
    machine_info,
    ours_config_toml,
    stop_on_sigterm,
    trl_python,
    write_result,
)

PHASES = {"sampling": "sampling", "training": "training"}


def child_ours(config: Path, out: Path) -> None:
    """Run `ddpo train` in this process with its epoch phases under the operator profiler."""
    from _op_profile import OpProfiler

    import trainer.train as train_mod
    from trainer.config import load_config

    ops = OpProfiler()
    for method, phase in (("sample_epoch", "sampling"), ("update", "training")):
        ops.wrap(train_mod, method, phase)
        profiled = getattr(train_mod, method)

        def gated(run, epoch, *args, _profiled=profiled, **kwargs):
            ops.active = epoch >= 1  # the first epoch is a warm-up
            return _profiled(run, epoch, *args, **kwargs)

        setattr(train_mod, method, gated)
    train_mod.train(load_config(config, []))
    ops.dump(out)


def run_side(who: str, model_dir: Path, server_url: str, epochs: int, work: Path, env) -> dict:
    prof = work / f"{who}-{time.monotonic_ns()}.json"
    if who == "ours":
        cfg = work / f"{prof.stem}.toml"
        cfg.write_text(ours_config_toml(model_dir, work / prof.stem, server_url, epochs))
        cmd = [sys.executable, __file__, "--child-ours", str(cfg), "--child-out", str(prof)]
    else:
        cmd = [str(trl_python()), str(BENCH_DIR / "trl_ddpo_epoch.py"), "--model-dir"]
        cmd += [str(model_dir), "--epochs", str(epochs), "--out", str(prof.with_suffix(".run"))]
        cmd += ["--op-profile", str(prof)]
    log = prof.with_suffix(".log")
    with log.open("wb") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"{who} failed:\n{log.read_text(errors='replace')[-3000:]}")
    return json.loads(prof.read_text())


def report(name: str, ours: dict, trl: dict) -> None:
    for phase in PHASES:
        o, t = ours[phase], trl[phase]
        per = o["calls"], t["calls"]
        print(
            f"\n{name} / {phase}: wall ours {o['wall_s']:.2f}s, trl {t['wall_s']:.2f}s",
            f"(calls {per})",
        )
        print(f"  {'category':<20}{'ours n':>9}{'trl n':>9}{'ours s':>9}{'trl s':>9}")
        cats = sorted(set(o["categories"]) | set(t["categories"]))
        for c in cats:
            a = o["categories"].get(c, {"count": 0, "self_cpu_s": 0.0})
            b = t["categories"].get(c, {"count": 0, "self_cpu_s": 0.0})
            print(
                f"  {c:<20}{a['count']:>9}{b['count']:>9}",
                f"{a['self_cpu_s']:>8.3f}{b['self_cpu_s']:>9.3f}",
            )
        print(
            f"  {'total':<20}{o['op_count']:>9}{t['op_count']:>9}",
            f"{o['self_cpu_s']:>8.3f}{t['self_cpu_s']:>9.3f}",
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2, help="per process; the first is not profiled")
    ap.add_argument("--model-dir", type=Path, action="append", default=None)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the children")
    ap.add_argument("--out", default="phase_profile")
    ap.add_argument("--child-ours", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_ours:
        child_ours(args.child_ours, args.child_out)
        return
    stop_on_sigterm()
    from ddpo.server_process import RewardServerProcess

    info = machine_info()
    dirs = (
        [d.resolve() for d in args.model_dir]
        if args.model_dir
        else [
            build_bench_pipeline(default_pipeline_dir()),
            REPO / "models" / "tiny-sd",
        ]
    )
    env = child_env({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    work = Path(tempfile.mkdtemp(prefix="ddpo-phase-"))
    results = {}
    with RewardServerProcess(["jpeg_compressibility"], log_file=work / "server.log") as server:
        for p, model_dir in enumerate(dirs):
            order = ["ours", "trl"] if p % 2 == 0 else ["trl", "ours"]
            got = {
                who: run_side(who, model_dir, server.url, args.epochs, work, env) for who in order
            }
            report(model_dir.name, got["ours"], got["trl"])
            results[model_dir.name] = got
            print(f"(load {os.getloadavg()[0]:.1f})", flush=True)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    path = write_result(
        args.out,
        {
            "command": command,
            "machine": info,
            "loadavg_at_end": os.getloadavg(),
            "threads": args.threads,
            "epochs_per_process": args.epochs,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
