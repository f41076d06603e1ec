"""GPU suite: memory, speed and ratio exactness of the trainer on real-size random-weight models.

One command for a lent H100/H200-class GPU with no internet. The GPU host has
torch, transformers, accelerate, peft and httpx but no diffusers, fastapi or
pydantic; fetch those as wheels here with `../shared/tools/gpu-wheels` (from the
project root; it writes .whl/), carry .whl/ along, and run there, from the
project root:

    python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl && PYTHONPATH=$PWD/.site:$PWD python3 benchmarks/gpu_suite.py

Every model has the real architecture (benchmarks/gpu_archs.py, gpu_flow.py; parameter
counts checked against the published checkpoints) and random weights, so nothing is
downloaded. Each part runs in its own process under its own time cap
(`--part-timeout`), so one slow or crashing part cannot starve the others: SD 1.5
LoRA epochs, full fine-tuning memory, the PPO ratio with unchanged weights, SDXL,
SD3.5-Medium and FLUX.1 with the flow presets (benchmarks/gpu_sd_parts.py), the
aesthetic, PickScore and CLIPScore scorers (gpu_scorers.py), and trl 0.19.1's epoch
on the same SD 1.5 pipeline (gpu_trl.py). docs/benchmarks.md says what each measures.

Timing: one warm-up epoch at the timed batch shapes but 2 denoising steps and one
sampling batch, then one timed epoch. Results go to benchmarks/results/gpu_suite.json
(`--out`), written after every part, and a table is printed. `--smoke` runs every part
on tiny configs on the CPU (tests/test_gpu_suite_smoke.py), so GPU time is not spent
on a typo.
"""  # noqa: E501  (the command above is one line on purpose)

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Before torch is imported: offline, quiet, and a CUDA check that does not initialise the
# driver, so that the parent stays safe to fork (it never touches the GPU itself).
for _key, _value in {
    "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}.items():
    os.environ.setdefault(_key, _value)

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _path in (str(REPO), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _common import machine_info  # noqa: E402  (stdlib only)
from gpu_archs import FULL, SMOKE, Sizes  # noqa: E402
from gpu_forward import part_sd15_forward  # noqa: E402
from gpu_measure import NO_CUDA, Report, device_info, package_versions, peak_gib  # noqa: E402
from gpu_report import headline, print_table  # noqa: E402
from gpu_scorers import part_clip_scorer  # noqa: E402  (the parts import torch lazily)
from gpu_sd_parts import (  # noqa: E402
    part_aesthetic,
    part_flow_lora,
    part_sd15_full_ft,
    part_sd15_lora,
    part_sd15_ratio,
    part_sdxl_lora,
)
from gpu_trl import TrlUnavailable, part_trl_sd15_lora  # noqa: E402

DEFAULT_OUT = BENCH_DIR / "results" / "gpu_suite.json"
# -- parts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    name: str
    what: str
    run: Callable[[argparse.Namespace, Sizes, Report], None] | None = None
    skip_reason: str = ""


PARTS: list[Part] = [
    Part("sd15_lora_bf16", "SD 1.5 512 px LoRA bf16 epoch", part_sd15_lora("bf16")),
    Part("sd15_lora_fp16", "SD 1.5 512 px LoRA fp16 epoch", part_sd15_lora("fp16")),
    Part("sd15_ratio_bf16", "PPO ratio, unchanged weights, bf16", part_sd15_ratio("bf16")),
    Part("sd15_ratio_fp16", "PPO ratio, unchanged weights, fp16", part_sd15_ratio("fp16")),
    Part("sd15_full_ft", "SD 1.5 full fine-tuning memory", part_sd15_full_ft),
    Part("sd15_nft_bf16", "SD 1.5 512 px LoRA bf16 NFT epoch", part_sd15_forward("nft", "bf16")),
    Part("sd15_awm_bf16", "SD 1.5 512 px LoRA bf16 AWM epoch", part_sd15_forward("awm", "bf16")),
    Part("aesthetic", "aesthetic scorer images/s", part_aesthetic),
    Part("pickscore", "PickScore (ViT-H/14) scorer images/s", part_clip_scorer("pickscore")),
    Part("clip_score", "CLIPScore (ViT-L/14) scorer images/s", part_clip_scorer("clip_score")),
    Part("trl_sd15_lora_bf16", "trl 0.19.1 SD 1.5 LoRA bf16 epoch", part_trl_sd15_lora("bf16")),
    Part("sdxl_lora_bf16", "SDXL 1024 px LoRA bf16 epoch", part_sdxl_lora),
    Part(
        "sd35_flow_lora_bf16",
        "SD3.5-Medium 512 px LoRA bf16 epoch",
        part_flow_lora("sd35", "sd35-medium-grpo-lora.toml"),
    ),
    Part(
        "flux1_flow_lora_bf16",
        "FLUX.1-dev 512 px LoRA bf16 epoch",
        part_flow_lora("flux", "flux1-dev-grpo-lora.toml"),
    ),
]
PART_BY_NAME = {p.name: p for p in PARTS}


# -- running parts in child processes ------------------------------------------------------


def child_main(args: argparse.Namespace, name: str, out: Path) -> int:
    """Run one part and write its result; a failure is a result too (with the traceback)."""
    sizes = SMOKE if args.smoke else FULL
    report = Report()
    part = PART_BY_NAME[name]
    assert part.run is not None
    status, code = {"status": "ok"}, 0
    try:
        if not args.progress:
            quiet_progress_bars()
        part.run(args, sizes, report)
    except TrlUnavailable as exc:
        status = {"status": "skipped", "reason": str(exc)}
    except BaseException as exc:  # noqa: BLE001  (an OOM or a typo: report, do not hide)
        status = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": traceback.format_exc()[-6000:],
        }
        with contextlib.suppress(Exception):
            report.put("peak_memory_gib_at_failure", peak_gib(), NO_CUDA)
        code = 1
    result = {**status, **report.as_dict()}
    with contextlib.suppress(Exception):
        result["device"] = device_info(args)
    out.write_text(json.dumps(result, default=_json_default))
    return code


def quiet_progress_bars() -> None:
    """The trainer's tqdm bars off: they would fill the few kB of output a device run returns."""
    import trainer.ppo
    import trainer.train

    for module in (trainer.ppo, trainer.train):
        bar = module.tqdm
        module.tqdm = lambda *a, _bar=bar, **k: _bar(*a, **{**k, "disable": True})  # type: ignore[attr-defined]


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def preimport() -> None:
    """Import the heavy modules once in the parent, so forked parts start at once.

    Importing them initialises no CUDA (PYTORCH_NVML_BASED_CUDA_CHECK is set), which
    is what keeps fork safe; checked before every fork.
    """
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import scorer_throughput  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401

    import reward_server.scorers.aesthetic  # noqa: F401
    import reward_server.scorers.clip_score  # noqa: F401
    import reward_server.scorers.pickscore  # noqa: F401
    import trainer.ppo  # noqa: F401
    import trainer.train  # noqa: F401


class Child:
    """A part's process: forked from this one (`fork`) or a fresh interpreter (`spawn`)."""

    def __init__(self, args: argparse.Namespace, name: str, out: Path) -> None:
        self.proc: subprocess.Popen | None = None
        self.code: int | None = None
        import torch

        spawn = args.start == "spawn" or torch.cuda.is_initialized()
        if spawn and args.start == "fork":  # forking would copy a live CUDA context: unsafe
            print("[gpu_suite] CUDA is initialised in the parent: spawning instead", flush=True)
        if spawn:
            cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv]
            cmd += ["--child", name, "--child-out", str(out)]
            self.proc = subprocess.Popen(cmd, start_new_session=True)
            self.pid = self.proc.pid
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: own process group, default signals, never returns
            code = 1
            try:
                os.setpgid(0, 0)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = child_main(args, name, out)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also here, so a kill right away reaches the group
        self.pid = pid

    def poll(self) -> int | None:
        """The exit code once the process has ended (reaped once, remembered)."""
        if self.code is None:
            if self.proc is not None:
                self.code = self.proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the part is still running after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.code

    def kill(self) -> None:
        """SIGKILL to the part's process group (a hung CUDA call ignores anything softer)."""
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait(30)


def run_part(args: argparse.Namespace, part: Part, cap: float, tmp: Path) -> dict[str, Any]:
    """One part in its own process under its cap; whatever happens, a result comes back."""
    out = tmp / f"{part.name}.json"
    t0 = time.perf_counter()
    child = Child(args, part.name, out)
    try:
        code = child.wait(cap)
    finally:
        child.kill()  # on a timeout, and on Ctrl-C/SIGTERM of the suite
    wall = time.perf_counter() - t0
    if code is None:
        result: dict[str, Any] = {"status": "timeout", "reason": f"killed after {cap:.0f} s"}
    elif out.is_file():
        result = json.loads(out.read_text())
    else:
        why = f"signal {-code}" if code < 0 else f"exit code {code}"
        result = {"status": "failed", "error": f"no result ({why}; out of host memory?)"}
    result.update(wall_s=wall, timeout_s=cap)
    return result


def part_timeouts(values: list[str]) -> tuple[float, dict[str, float]]:
    """`--part-timeout 180 --part-timeout sdxl_lora_bf16=240`: a default and overrides."""
    default, per_part = 180.0, {}
    for value in values:
        if "=" in value:
            name, seconds = value.split("=", 1)
            if name not in PART_BY_NAME:
                raise SystemExit(f"--part-timeout: no part {name!r}")
            per_part[name] = float(seconds)
        else:
            default = float(value)
    return default, per_part


# -- output --------------------------------------------------------------------------------


def write(doc: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--smoke", action="store_true", help="tiny models on any device, seconds")
    parser.add_argument(
        "--parts", default="", help="comma-separated subset, run in the order given"
    )
    parser.add_argument(
        "--part-timeout",
        action="append",
        default=[],
        metavar="[PART=]SECONDS",
        help="time cap of each part (default 180 s), or of one part",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=560.0,
        help="stop starting parts once this many seconds are spent (a device command may run 600)",
    )
    parser.add_argument("--peak-flops", type=float, default=None, help="override the device peak")
    parser.add_argument(
        "--full-precision",
        default="no",
        choices=("no", "fp16", "bf16"),
        help="mixed precision of sd15_full_ft (configs/sd15-aesthetic-full.toml: no)",
    )
    parser.add_argument(
        "--start",
        choices=("spawn", "fork"),
        default=None,
        help="how parts start: a fresh interpreter each (default on GPU hosts) or forked "
        "from this process after importing once (default with --smoke: seconds, not minutes)",
    )
    parser.add_argument("--progress", action="store_true", help="show the trainer's tqdm bars")
    parser.add_argument(
        "--trl-site",
        type=Path,
        default=None,
        help="folder of trl 0.19.1 and the libraries it needs (pip --target), for "
        "trl_sd15_lora_bf16 (default: .site-trl in the project root; skipped without it)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = [a for a in argv]
    if args.child:
        return child_main(args, args.child, args.child_out)
    if args.start is None:
        args.start = "fork" if args.smoke else "spawn"

    names = [n.strip() for n in args.parts.split(",") if n.strip()] or [p.name for p in PARTS]
    unknown = [n for n in names if n not in PART_BY_NAME]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PART_BY_NAME)}")
    default_cap, caps = part_timeouts(args.part_timeout)
    sizes = SMOKE if args.smoke else FULL
    doc: dict[str, Any] = {
        "suite": "gpu_suite",
        "schema": 1,
        "command": " ".join(["python", "benchmarks/gpu_suite.py", *argv]),
        "smoke": args.smoke,
        "machine": machine_info(),
        "versions": package_versions(),
        "device": None,
        "start": args.start,
        "budget_s": args.budget,
        "sizes": asdict(sizes),
        "parts": {},
    }
    doc["date_utc"] = doc["machine"]["date_utc"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.start == "fork":
        preimport()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_suite-") as tmp:
        for name in names:
            part = PART_BY_NAME[name]
            left = args.budget - (time.monotonic() - t_start)
            if part.run is None:
                result: dict[str, Any] = {"status": "skipped", "reason": part.skip_reason}
            elif left < 20:
                result = {"status": "skipped", "reason": f"suite budget spent ({args.budget} s)"}
            else:
                cap = min(caps.get(name, default_cap), left)
                print(f"[gpu_suite] {name}: {part.what} (cap {cap:.0f} s)", flush=True)
                result = run_part(args, part, cap, Path(tmp))
                if doc["device"] is None and result.get("device"):
                    doc["device"] = result["device"]
            result["what"] = part.what
            doc["parts"][name] = result
            print(f"[gpu_suite] {name}: {result['status']} {headline(name, result)}", flush=True)
            write(doc, args.out)
    doc["wall_s"] = time.monotonic() - t_start
    write(doc, args.out)
    print_table(doc)
    print(f"wrote {args.out}")
    failed = [n for n, r in doc["parts"].items() if r["status"] in ("failed", "timeout")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
