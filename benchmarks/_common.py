"""Helpers shared by the benchmark scripts.

Only the standard library is imported at module level: trl_ddpo_epoch.py runs
in the separate trl venv (benchmarks/.venv-trl), which has no `trainer`
package and other diffusers/transformers versions.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = BENCH_DIR / ".cache"
TRL_VENV = BENCH_DIR / ".venv-trl"
PROMPTS_FILE = REPO / "configs" / "aesthetic_prompts.txt"

#: The settings every epoch benchmark uses, ours and trl's alike (trl's key names).
SETTINGS = {
    "sample_batch_size": 6,
    "sample_num_batches_per_epoch": 2,
    "sample_num_steps": 20,
    "sample_guidance_scale": 5.0,
    "sample_eta": 1.0,
    "train_batch_size": 3,
    "train_gradient_accumulation_steps": 1,
    "train_num_inner_epochs": 1,
    "train_learning_rate": 3e-4,
    "train_clip_range": 1e-4,
    "train_adv_clip_max": 5.0,
    "train_timestep_fraction": 1.0,
    "train_max_grad_norm": 1.0,
    "train_cfg": True,
    "per_prompt_stat_tracking": True,
    "per_prompt_stat_tracking_buffer_size": 32,
    "per_prompt_stat_tracking_min_count": 16,
    "mixed_precision": "no",
    "use_lora": True,
}
#: UNet sample_size 32 with the 2-level random VAE (scale factor 2): 64 px images.
SAMPLE_SIZE = 32
IMAGE_PX = 64


#: Offline and quiet; thread settings are left to the caller (see child_env).
QUIET_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore",
}
#: What --single-thread adds: the figures of 2026-11-25 were measured this way.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: OpenMP settings a benchmark may vary; child_env removes inherited ones.
OMP_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def child_env(extra: dict[str, str] | None = None, single_thread: bool = False) -> dict[str, str]:
    """Environment for child processes (trainer, reward server, trl): offline and quiet.

    By default the OpenMP variables are removed, so every child runs with the
    thread defaults a user gets (all cores, libgomp's wait policy): forcing one
    thread hid a 2.2x slowdown of `ddpo train` (docs/benchmarks.md, 2026-12-01).
    Even an OMP_NUM_THREADS=1 exported in the benchmark's own shell is dropped.
    single_thread gives each child one intra-op thread, as the older figures had;
    `extra` (e.g. OMP_WAIT_POLICY) goes on top.
    """
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    env.update(QUIET_ENV)
    if single_thread:
        env.update(SINGLE_THREAD_ENV)
    env.update(extra or {})
    return env


def single_thread_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """child_env with one intra-op thread per child (reward_transport's per-image costs)."""
    return child_env(extra, single_thread=True)


def thread_env_label(env: dict[str, str]) -> dict[str, str | None]:
    """The OpenMP variables a child actually got, for the result JSON."""
    return {name: env.get(name) for name in OMP_VARS}


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `with RewardServerProcess(...)` stops its child."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def prompts() -> list[str]:
    lines = PROMPTS_FILE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def summarize(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


OUR_PACKAGES = [
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "numpy",
    "pillow",
    "httpx",
    "fastapi",
    "uvicorn",
    "pydantic",
    "h11",
    "httptools",
    "uvloop",
]
TRL_PACKAGES = ["trl", "torch", "diffusers", "transformers", "peft", "accelerate", "pillow"]


def machine_info() -> dict[str, object]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": load,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "omp_env_of_benchmark": {n: os.environ.get(n) for n in OMP_VARS},
    }


def trl_python() -> Path:
    return TRL_VENV / "bin" / "python"


def trl_versions() -> dict[str, str]:
    """Package versions inside the trl venv (asked of that interpreter)."""
    import subprocess

    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run(
        [str(trl_python()), "-c", code, *TRL_PACKAGES], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout)


def write_result(name: str, data: dict[str, object]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


# -- the shared tiny pipeline (built with the project's venv) ---------------------------------


def build_bench_pipeline(path: Path, sample_size: int = SAMPLE_SIZE) -> Path:
    """The random-weight SD pipeline both trainers load, readable by transformers 4 and 5.

    trainer.random_pipeline builds its CLIPTokenizer with `vocab_file=`/`merges_file=`,
    which transformers 5 ignores (its CLIPTokenizer takes `vocab=`/`merges=`), so the
    saved tokenizer.json holds only the two special tokens and every prompt becomes
    the same token ids; transformers 4.x (trl's venv) cannot load that directory at
    all (no vocab.json). So the tokenizer is written again here: the same byte-level
    vocabulary as tokenizer.json and as vocab.json + merges.txt.
    """
    path = Path(path)
    marker = path / ".bench-pipeline.json"
    want = {"sample_size": sample_size, "version": 2}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return path
    from trainer.random_pipeline import build_random_sd

    build_random_sd(path, sample_size=sample_size)
    write_portable_tokenizer(path / "tokenizer")
    marker.write_text(json.dumps(want))
    return path


def write_portable_tokenizer(tok_dir: Path) -> None:
    """Rewrite a saved pipeline's byte-level CLIP tokenizer so transformers 4 and 5 both load it.

    Written as tokenizer.json (transformers 5) and as vocab.json + merges.txt (4.x);
    the token count is checked after a reload.
    """
    from transformers import CLIPTokenizer

    from trainer.random_pipeline import _write_char_tokenizer

    _write_char_tokenizer(tok_dir)  # vocab.json + merges.txt, for the slow tokenizer
    vocab = json.loads((tok_dir / "vocab.json").read_text())
    config = tok_dir / "tokenizer_config.json"
    max_length = json.loads(config.read_text())["model_max_length"] if config.is_file() else 77
    try:
        tok = CLIPTokenizer(
            vocab=vocab, merges=[], model_max_length=max_length, pad_token="<|endoftext|>"
        )
    except TypeError:  # transformers 4: file arguments
        tok = CLIPTokenizer(
            vocab_file=str(tok_dir / "vocab.json"),
            merges_file=str(tok_dir / "merges.txt"),
            model_max_length=max_length,
            pad_token="<|endoftext|>",
        )
    if len(tok) != len(vocab):
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {len(vocab)}")
    tok.save_pretrained(tok_dir)
    _write_char_tokenizer(tok_dir)  # save_pretrained may have dropped them
    check = CLIPTokenizer.from_pretrained(tok_dir)
    if len(check) != len(vocab):
        raise RuntimeError(f"saved tokenizer has {len(check)} tokens, expected {len(vocab)}")


def default_pipeline_dir(sample_size: int = SAMPLE_SIZE) -> Path:
    """Where build_bench_pipeline puts the random pipeline (2 px per latent: the VAE's factor)."""
    return CACHE_DIR / f"tiny-sd-{2 * sample_size}px"


def ours_config_toml(
    model_dir: Path,
    output_dir: Path,
    server_url: str,
    epochs: int,
    seed: int = 0,
    scorer: str = "jpeg_compressibility",
    prompts_file: Path = PROMPTS_FILE,
) -> str:
    """A `ddpo train` config with SETTINGS; checkpoints only at the end, no image logging."""
    s = SETTINGS
    lines = [
        f'pretrained_model = "{model_dir}"',
        f'prompts_file = "{prompts_file}"',
        f'output_dir = "{output_dir}"',
        f"seed = {seed}",
        f"num_epochs = {epochs}",
        f"save_freq = {max(epochs, 1)}",
        "num_checkpoint_limit = 1",
        "log_images_every = 0",
        'train_algorithm = "ppo"  # trl\'s DDPO, side by side',
        f"use_lora = {str(s['use_lora']).lower()}",
        f'mixed_precision = "{s["mixed_precision"]}"',
    ]
    for key in (
        "sample_num_steps",
        "sample_eta",
        "sample_guidance_scale",
        "sample_batch_size",
        "sample_num_batches_per_epoch",
        "train_batch_size",
        "train_gradient_accumulation_steps",
        "train_learning_rate",
        "train_num_inner_epochs",
        "train_clip_range",
        "train_adv_clip_max",
        "train_timestep_fraction",
        "train_max_grad_norm",
        "per_prompt_stat_tracking_buffer_size",
        "per_prompt_stat_tracking_min_count",
    ):
        lines.append(f"{key} = {s[key]}")
    lines += [
        f"train_cfg = {str(s['train_cfg']).lower()}",
        f"per_prompt_stat_tracking = {str(s['per_prompt_stat_tracking']).lower()}",
        "",
        "[[rewards]]",
        f'url = "{server_url}"',
        f'scorer = "{scorer}"',
        'mode = "sync"',
    ]
    return "\n".join(lines) + "\n"


def our_epochs(metrics_path: Path, skip: int = 1) -> list[dict[str, float]]:
    """Per-epoch phase times from a run's metrics.jsonl, the first `skip` (warm-up) left out."""
    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    out = []
    for r in rows[skip:]:
        total = r["time_total_s"]
        s, w, t = r["time_sampling_s"], r["time_reward_wait_s"], r["time_training_s"]
        out.append(
            {
                "epoch": r["epoch"],
                "total_s": total,
                "sampling_s": s,
                "reward_wait_s": w,
                "training_s": t,
                "overhead_s": total - s - w - t,
            }
        )
    return out
