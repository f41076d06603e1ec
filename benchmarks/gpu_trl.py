"""trl 0.19.1's DDPOTrainer on the real SD 1.5 architecture, for benchmarks/gpu_suite.py.

trl's last DDPO release needs older libraries than ours (transformers 4.53,
diffusers 0.34, huggingface_hub < 1), so it runs in a child interpreter whose
PYTHONPATH starts with a folder of those wheels (`--trl-site`, made by
`pip install --no-deps --target`; docs/benchmarks.md has the commands). The same
random SD 1.5 pipeline the suite trains is saved to disk for it, and
benchmarks/trl_ddpo_epoch.py runs two epochs at the LoRA preset's settings, the
first a warm-up with one sampling batch at the same shapes: the timed epoch is the
second, as the suite's own parts time one epoch after a short warm-up.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_TRL_SITE = REPO / ".site-trl"
#: TrainConfig fields passed to trl under the same names (trl's DDPOConfig spells them so).
SHARED_KEYS = (
    "sample_num_steps",
    "sample_batch_size",
    "sample_num_batches_per_epoch",
    "sample_guidance_scale",
    "sample_eta",
    "train_batch_size",
    "train_gradient_accumulation_steps",
    "train_learning_rate",
    "train_clip_range",
    "train_adv_clip_max",
    "train_timestep_fraction",
    "train_max_grad_norm",
    "train_cfg",
)


class TrlUnavailable(RuntimeError):
    """No trl site folder: the part is skipped, not failed."""


def trl_settings(cfg: Any, sizes: Any, precision: str, cuda: bool) -> dict[str, Any]:
    """The preset's settings in trl's names, with the suite's sizes (--smoke: tiny)."""
    out = {key: getattr(cfg, key) for key in SHARED_KEYS}
    if sizes.sd_steps is not None:
        out["sample_num_steps"] = sizes.sd_steps
    if sizes.sd_num_batches is not None:
        out["sample_num_batches_per_epoch"] = sizes.sd_num_batches
    out["mixed_precision"] = precision if cuda else "no"
    return out


def part_trl_sd15_lora(precision: str) -> Callable[[argparse.Namespace, Any, Any], None]:
    def run_part(args: argparse.Namespace, sizes: Any, report: Any) -> None:
        import torch
        from _common import write_portable_tokenizer
        from gpu_epoch import LORA_PRESET, build_pipeline

        from trainer.config import load_config

        site = Path(getattr(args, "trl_site", None) or DEFAULT_TRL_SITE)
        if not (site / "trl").is_dir():
            raise TrlUnavailable(f"trl not installed in {site} (see docs/benchmarks.md)")
        cuda = torch.cuda.is_available()
        settings = trl_settings(load_config(LORA_PRESET), sizes, precision, cuda)
        report.settings.update(settings=settings, trl_site=str(site))
        with tempfile.TemporaryDirectory(prefix="trl-sd15-") as tmp:
            model_dir, out = Path(tmp) / "model", Path(tmp) / "trl.json"
            pipe, counts = build_pipeline("sd15", sizes, "cuda" if cuda else "cpu")
            report.figures["params"] = counts
            pipe.save_pretrained(model_dir, safe_serialization=True)
            del pipe
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            write_portable_tokenizer(model_dir / "tokenizer")
            cmd = [sys.executable, str(BENCH_DIR / "trl_ddpo_epoch.py")]
            cmd += ["--model-dir", str(model_dir), "--epochs", "2", "--out", str(out)]
            cmd += ["--warmup-batches", "1"]
            for key, value in settings.items():
                cmd += ["--set", f"{key}={json.dumps(value)}"]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(BENCH_DIR)])}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = proc.stderr[-3000:]
                raise RuntimeError(f"trl_ddpo_epoch.py exit {proc.returncode}: {tail}")
            doc = json.loads(out.read_text())
        first, timed = doc["epochs"][0], doc["epochs"][-1]
        n_samples = settings["sample_batch_size"] * settings["sample_num_batches_per_epoch"]
        report.figures.update(
            epoch_s=timed["total_s"],
            first_epoch_s=first["total_s"],
            sampling_s=timed.get("sampling_s"),
            reward_s=timed.get("reward_s"),
            training_s=timed.get("training_s"),
            images_per_s=n_samples / timed["total_s"],
            load_s=doc["load_s"],
        )
        report.put("peak_memory_gib", timed.get("peak_memory_gib"), "no CUDA device")
        report.settings["trl_versions"] = doc.get("versions")
        report.notes.append(
            "trl's DDPOTrainer in process, JPEG compressibility computed in-process "
            "(its example reward); epoch 2 of 2 timed, epoch 1 (one sampling batch) the warm-up"
        )

    return run_part
