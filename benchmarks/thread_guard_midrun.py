"""Does the thread guard catch a busy program that starts mid-run? (issue 27)

One `ddpo train` on `models/tiny-sd` at trl's settings with the user's thread
defaults (nothing exported); after --hog-after seconds a busy-loop process starts
beside it, stopped after --hog-for seconds if given. Prints each epoch's time and
`cpu_threads` from metrics.jsonl: the guard should switch to one thread after the
first slow epoch, and back to all cores at its first recheck after the loop stops.

    python benchmarks/thread_guard_midrun.py --epochs 8 --hog-after 25
    python benchmarks/thread_guard_midrun.py --epochs 16 --hog-after 25 --hog-for 40
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from _common import REPO, RESULTS_DIR, child_env, machine_info, stop_on_sigterm
from epoch_breakdown import run_ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "tiny-sd")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--hog-after", type=float, default=25.0, help="seconds after the start")
    ap.add_argument("--hog-for", type=float, default=None, help="seconds; default: to the end")
    ap.add_argument("--out", default="thread_guard_midrun")
    args = ap.parse_args()
    stop_on_sigterm()
    from ddpo.server_process import RewardServerProcess

    work = Path(tempfile.mkdtemp(prefix="ddpo-guard-"))
    hog: list[subprocess.Popen] = []

    def start_hog() -> None:
        hog.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        if args.hog_for is not None:
            stop = threading.Timer(args.hog_for, hog[-1].kill)
            stop.daemon = True
            stop.start()

    timer = threading.Timer(args.hog_after, start_hog)
    with RewardServerProcess(["jpeg_compressibility"], log_file=work / "server.log") as srv:
        timer.start()
        try:
            out = run_ours(
                args.model_dir.resolve(), srv.url, args.epochs, work, seed=0, env=child_env()
            )
        finally:
            timer.cancel()
            for p in hog:
                p.kill()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    table = [
        {"epoch": r["epoch"], "total_s": r["time_total_s"], "cpu_threads": r["cpu_threads"]}
        for r in rows
    ]
    for r in table:
        print(f"epoch {r['epoch']}: {r['total_s']:.2f} s, cpu_threads {r['cpu_threads']}")
    log = (work / f"{out.name}.log").read_text(errors="replace")
    warned = [line for line in log.splitlines() if "one thread" in line or "back to" in line]
    print(*(warned or ["(no guard warning)"]), sep="\n")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{args.out}.json").write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "machine": machine_info(),
                "hog_after_s": args.hog_after,
                "hog_for_s": args.hog_for,
                "epochs": table,
                "guard_log": warned,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
