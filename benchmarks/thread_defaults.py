"""OpenMP thread defaults: `ddpo train` alone, beside a reward server, and `ddpo serve` alone.

Every child starts from the environment a user has (no OMP_* variables); each
case then sets only what it names. Trainer cases (`ddpo train`, LoRA, the
_common.SETTINGS epoch) run in rounds, every case once per round, the order
reversed on odd rounds; each process's first epoch is a warm-up and is left out.

- remote: the reward server is a jpeg_compressibility subprocess with one
  passive thread (its CPU use is a few ms per epoch: a stand-in for a server on
  another host); the trainer runs with OMP_WAIT_POLICY=PASSIVE (the `ddpo`
  default until 2026-12-01), libgomp's default spin (300000), nothing exported
  (what `ddpo` sets then: ddpo/thread_defaults.py), ACTIVE, a shorter spin
  (GOMP_SPINCOUNT 10000 or 1000), or one thread.
- colocated: the server scores with prompt_fidelity (a torch CNN, so its own
  OpenMP threads matter) on the same cores: "old" is what `ddpo demo` and
  RewardServerProcess gave before (PASSIVE for both, the server on all cores),
  "new" is now (trainer default; server one passive thread, RewardServerProcess
  itself), "naive" drops PASSIVE without the server change, "active" has both
  spin (the starvation the PASSIVE default was added against).
- --hogs N: N busy-loop processes run beside every trainer case (another
  program, or a co-located server scoring flat out, holding a core).
- serve (--serve-seconds > 0): `ddpo serve --scorers prompt_fidelity` alone,
  images/s for 64-image requests from one client, by wait policy and threads.

    python benchmarks/thread_defaults.py --rounds 2 --epochs 4

Writes benchmarks/results/thread_defaults.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from _common import (
    OUR_PACKAGES,
    REPO,
    SETTINGS,
    child_env,
    machine_info,
    our_epochs,
    stop_on_sigterm,
    summarize,
    versions,
    write_result,
)
from epoch_breakdown import run_ours

PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
ACTIVE = {"OMP_WAIT_POLICY": "ACTIVE"}
ONE_PASSIVE = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
#: Policy unset, but spin ~30x shorter than libgomp's default (300000) before sleeping.
SPIN_10K = {"GOMP_SPINCOUNT": "10000"}
SPIN_1K = {"GOMP_SPINCOUNT": "1000"}
#: libgomp's own default with OMP_WAIT_POLICY unset, set explicitly: `ddpo` now sets a
#: shorter spin when neither variable is exported (ddpo/thread_defaults.py).
SPIN_LIBGOMP = {"GOMP_SPINCOUNT": "300000"}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

#: name: (trainer env, scorer, server env; None: RewardServerProcess's own defaults)
CASES: dict[str, tuple[dict[str, str], str, dict[str, str] | None]] = {
    "remote, trainer PASSIVE (old default)": (PASSIVE, "jpeg_compressibility", ONE_PASSIVE),
    "remote, trainer libgomp default (GOMP_SPINCOUNT=300000)": (
        SPIN_LIBGOMP,
        "jpeg_compressibility",
        ONE_PASSIVE,
    ),
    "remote, trainer ddpo default (nothing exported)": ({}, "jpeg_compressibility", ONE_PASSIVE),
    "remote, trainer ACTIVE": (ACTIVE, "jpeg_compressibility", ONE_PASSIVE),
    "remote, trainer GOMP_SPINCOUNT=10000": (SPIN_10K, "jpeg_compressibility", ONE_PASSIVE),
    "remote, trainer GOMP_SPINCOUNT=1000": (SPIN_1K, "jpeg_compressibility", ONE_PASSIVE),
    "remote, trainer OMP_NUM_THREADS=1": (ONE_THREAD, "jpeg_compressibility", ONE_PASSIVE),
    "colocated old: both PASSIVE, server all cores": (PASSIVE, "prompt_fidelity", PASSIVE),
    "colocated new: trainer ddpo default, RewardServerProcess": ({}, "prompt_fidelity", None),
    "colocated naive: nothing set anywhere": ({}, "prompt_fidelity", {}),
    "colocated active: both ACTIVE, server all cores": (ACTIVE, "prompt_fidelity", ACTIVE),
}
SERVE_CASES: dict[str, dict[str, str]] = {
    "unset (new `ddpo serve`)": {},
    "PASSIVE (old `ddpo serve`)": PASSIVE,
    "1 thread, PASSIVE (co-located server now)": ONE_PASSIVE,
}


def proc_omp_env(pid: int) -> dict[str, str]:
    """The OMP_* variables a running process was started with (Linux /proc), for the record."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
    return {k: v for k, v in pairs if k.startswith(("OMP_", "MKL_", "GOMP_"))}


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready")


@contextlib.contextmanager
def server(
    scorer: str, env: dict[str, str] | None, log: Path, cli: bool = False
) -> Iterator[tuple[str, int]]:
    """(url, pid) of a reward server; env None: RewardServerProcess with its own defaults.

    Otherwise the child gets exactly child_env(env): RewardServerProcess would put its
    few-thread defaults on top, which the "old" and "naive" cases must not have.
    """
    from ddpo.server_process import RewardServerProcess, free_port

    if env is None:
        extra = child_env({"DDPO_LOG_FORMAT": "text"})
        with RewardServerProcess([scorer], log_file=log, extra_env=extra) as srv:
            assert srv.proc is not None
            yield srv.url, srv.proc.pid
        return
    port = free_port()
    if cli:  # `ddpo serve`, through the CLI's main() as a user runs it
        cmd = [sys.executable, "-m", "ddpo.cli", "serve", "--log-level", "warning"]
    else:
        cmd = [sys.executable, "-m", "reward_server"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--scorers", scorer]
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            cmd, env=child_env({"DDPO_LOG_FORMAT": "text", **env}), stdout=fh, stderr=fh
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """n busy-looping processes: another program (or a busy co-located server) on the cores."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def shape_prompts_file(work: Path) -> Path:
    """The tiny model's 36 prompts, which prompt_fidelity can parse."""
    from shared.shapes import all_prompts

    path = work / "shape_prompts.txt"
    path.write_text("\n".join(all_prompts()) + "\n")
    return path


def run_trainer_cases(
    names: list[str],
    model_dir: Path,
    rounds: int,
    epochs: int,
    work: Path,
    timeout_s: float,
    save: Callable[[dict[str, dict[str, object]]], None],
) -> dict[str, dict[str, object]]:
    """Epoch times per case; `save` gets the table after every process (a kill keeps it)."""
    prompts_file = shape_prompts_file(work)
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    seen: dict[str, dict[str, object]] = {n: {"timed_out": []} for n in names}

    def table() -> dict[str, dict[str, object]]:
        keys = ["total_s", "sampling_s", "reward_wait_s", "training_s"]
        out = {}
        for n in names:
            phases = {k: summarize([e[k] for e in rows[n]]) for k in keys}
            out[n] = {**seen[n], **phases, "epochs": rows[n]}
        return out

    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            trainer_env, scorer, server_env = CASES[name]
            env = child_env(trainer_env)
            t0 = time.perf_counter()
            with server(scorer, server_env, work / "server.log") as (url, pid):
                seen[name].update(
                    trainer_omp_env={k: v for k, v in env.items() if k.startswith("OMP_")},
                    server_omp_env=proc_omp_env(pid),
                    scorer=scorer,
                )
                try:
                    out = run_ours(
                        model_dir,
                        url,
                        epochs,
                        work,
                        seed=r,
                        env=env,
                        timeout_s=timeout_s,
                        scorer=scorer,
                        prompts_file=prompts_file,
                    )
                except subprocess.TimeoutExpired:
                    seen[name]["timed_out"].append({"round": r, "after_s": timeout_s})
                    print(f"round {r} {name}: killed after {timeout_s:.0f}s", flush=True)
                    save(table())
                    continue
            got = our_epochs(out / "metrics.jsonl", skip=1)
            rows[name] += got
            med = statistics.median(e["total_s"] for e in got)
            wall = time.perf_counter() - t0
            print(
                f"round {r} {name}: median epoch {med:.2f}s (process {wall:.0f}s, "
                f"load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            save(table())
    return table()


def serve_throughput(url: str, seconds: float, per_request: int = 64) -> dict[str, float]:
    """Images/s of one client posting `per_request` 64 px images per request, for `seconds`."""
    import httpx
    import numpy as np

    from shared.images import png_bytes
    from shared.shapes import all_prompts

    rng = np.random.default_rng(0)
    prompts = all_prompts()
    items = [
        {
            "id": str(i),
            "prompt": prompts[i % len(prompts)],
            "image": {
                "format": "png",
                "data": base64.b64encode(
                    png_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
                ).decode(),
            },
        }
        for i in range(per_request)
    ]
    body = json.dumps({"scorer": "prompt_fidelity", "items": items}).encode()
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=60.0) as client:
        for _ in range(3):  # warm-up
            client.post(f"{url}/v1/score", content=body, headers=headers).raise_for_status()
        latencies = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            client.post(f"{url}/v1/score", content=body, headers=headers).raise_for_status()
            latencies.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    return {
        "images_per_s": len(latencies) * per_request / wall,
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
    }


def run_serve_cases(rounds: int, seconds: float, work: Path) -> dict[str, dict[str, object]]:
    rows: dict[str, list[float]] = {n: [] for n in SERVE_CASES}
    seen: dict[str, dict[str, str]] = {}
    for r in range(rounds):
        for name in list(SERVE_CASES) if r % 2 == 0 else list(SERVE_CASES)[::-1]:
            log = work / "serve.log"
            with server("prompt_fidelity", SERVE_CASES[name], log, cli=True) as (url, pid):
                seen[name] = proc_omp_env(pid)
                got = serve_throughput(url, seconds)
            rows[name].append(got["images_per_s"])
            print(f"round {r} serve {name}: {got['images_per_s']:.0f} img/s", flush=True)
    return {n: {"server_omp_env": seen[n], "images_per_s": summarize(rows[n])} for n in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4, help="per process; the first is a warm-up")
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "tiny-sd")
    ap.add_argument("--cases", nargs="*", default=list(CASES), help="subset of the case names")
    ap.add_argument("--serve-seconds", type=float, default=8.0, help="0: skip the serve check")
    ap.add_argument(
        "--timeout", type=float, default=600.0, help="kill a trainer process after this (s)"
    )
    ap.add_argument(
        "--hogs", type=int, default=0, help="busy-loop processes beside every trainer case"
    )
    ap.add_argument("--out", default="thread_defaults")
    args = ap.parse_args()
    stop_on_sigterm()
    unknown = set(args.cases) - set(CASES)
    if unknown:
        sys.exit(f"unknown cases: {sorted(unknown)}; known: {list(CASES)}")

    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="ddpo-threads-"))
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])

    def save(trainer: dict[str, dict[str, object]], serve: dict[str, object] | None = None) -> Path:
        return write_result(
            args.out,
            {
                "command": command,
                "machine": info,
                "loadavg_now": os.getloadavg(),
                "versions": versions(OUR_PACKAGES),
                "settings": {**SETTINGS, "pipeline": str(args.model_dir)},
                "epochs_per_process": args.epochs,
                "cpu_hogs": args.hogs,
                "warmup_epochs_dropped_per_process": 1,
                "trainer": trainer,
                "serve": serve or {},
            },
        )

    with cpu_hogs(args.hogs):
        trainer = run_trainer_cases(
            args.cases, args.model_dir, args.rounds, args.epochs, work, args.timeout, save
        )
    serve = run_serve_cases(args.rounds, args.serve_seconds, work) if args.serve_seconds else {}

    print(f"\n`ddpo train` on {args.model_dir.name}, epoch seconds")
    print(f"{'case':<54}{'min':>8}{'median':>8}{'n':>4}  killed")
    for name, row in trainer.items():
        t = row["total_s"]
        lo, med = (f"{t['min']:>8.2f}", f"{t['median']:>8.2f}") if t["n"] else ("-", "-")
        print(f"{name:<54}{lo:>8}{med:>8}{t['n']:>4}  {len(row['timed_out'])}")
    if serve:
        print("\n`ddpo serve --scorers prompt_fidelity`, 64 images per request, images/s")
        for name, row in serve.items():
            v = row["images_per_s"]
            print(f"{name:<54}{v['min']:>8.0f}{v['median']:>8.0f}{v['max']:>8.0f}")
    path = save(trainer, serve)
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
