"""trl's DDPOTrainer on the benchmark pipeline, timing each epoch (runs in benchmarks/.venv-trl).

Same settings as our benchmark (benchmarks/_common.py SETTINGS): LoRA, fp32,
sample batch 6 x 2 batches, 20 DDIM steps, train batch 3, guidance 5, eta 1,
clip 1e-4; the reward is JPEG compressibility (quality 95, kB negated) computed
in-process, as in trl's own DDPO example. Phases are timed by wrapping the
trainer's _generate_samples, compute_rewards and _train_batched_samples.

    benchmarks/.venv-trl/bin/python benchmarks/trl_ddpo_epoch.py \
        --model-dir benchmarks/.cache/tiny-sd-64px --epochs 4 --out /tmp/trl.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

from _common import SETTINGS, TRL_PACKAGES, machine_info, prompts, versions
from _op_profile import OpProfiler


def load_text_encoder(pipeline, model_dir: Path) -> int:
    """Load the saved text encoder into trl's pipeline; returns the tensors loaded.

    transformers 5 (ours) saves CLIPTextModel weights without the `text_model.` prefix that
    transformers 4.x (trl's venv) expects, and 4.x then keeps a random encoder with only a
    warning: trl would train on random text conditioning. Missing or unused keys fail here.
    """
    from safetensors.torch import load_file

    path = Path(model_dir) / "text_encoder" / "model.safetensors"
    encoder = pipeline.sd_pipeline.text_encoder
    want = set(encoder.state_dict())
    state = load_file(str(path))
    state = {k if k in want else f"text_model.{k}": v for k, v in state.items()}
    missing, unused = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # a buffer, not saved
    if missing or unused:
        raise RuntimeError(
            f"text encoder of {model_dir}: missing {missing[:3]}, unused {unused[:3]}"
        )
    return len(state)


def jpeg_compressibility(images, prompts, metadata):
    """trl's example reward: negated JPEG size in kB at quality 95, on uint8 pixels."""
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(images, torch.Tensor):
        images = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    sizes = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        sizes.append(-buf.tell() / 1000.0)
    return np.array(sizes, dtype=np.float32), {}


def with_overrides(settings: dict, pairs: list[str]) -> dict:
    """SETTINGS with `KEY=VALUE` pairs applied; an unknown key is an error, not a no-op."""
    out = dict(settings)
    for pair in pairs:
        key, _, raw = pair.partition("=")
        if key not in out:
            raise SystemExit(f"--set: unknown setting {key!r}; known: {', '.join(out)}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


class PhaseTimer:
    def __init__(self) -> None:
        self.acc: dict[str, float] = {}

    def wrap(self, obj, method: str, phase: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.acc[phase] = self.acc.get(phase, 0.0) + time.perf_counter() - t0

        setattr(obj, method, timed)

    def take(self) -> dict[str, float]:
        out, self.acc = self.acc, {}
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--warmup-batches",
        type=int,
        default=None,
        help="run the first epoch with this many sampling batches (a warm-up at the timed "
        "shapes, cheaper than a whole epoch); later epochs use the setting",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one of the shared SETTINGS (VALUE as JSON, else a string); "
        "the GPU suite passes DDPO's reference settings this way",
    )
    ap.add_argument(
        "--op-profile", type=Path, help="write an operator profile of epochs after the first here"
    )
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    # transformers 4.53 imports the `kernels` package whenever one is installed, and the
    # releases our venv has need huggingface_hub >= 1, which trl's stack cannot take:
    # hide it (find_spec answers None for a None entry), trl never uses it.
    sys.modules.setdefault("kernels", None)
    import torch
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    s = with_overrides(SETTINGS, args.set)
    logdir = tempfile.mkdtemp(prefix="trl-ddpo-")
    config = DDPOConfig(
        num_epochs=args.epochs,
        seed=args.seed,
        save_freq=10**9,  # no checkpoints: ours saves only at its last epoch either
        log_with=None,
        logdir=logdir,
        project_kwargs={"project_dir": logdir},
        mixed_precision=s["mixed_precision"],
        allow_tf32=False,
        sample_num_steps=s["sample_num_steps"],
        sample_eta=s["sample_eta"],
        sample_guidance_scale=s["sample_guidance_scale"],
        sample_batch_size=s["sample_batch_size"],
        sample_num_batches_per_epoch=s["sample_num_batches_per_epoch"],
        train_batch_size=s["train_batch_size"],
        train_gradient_accumulation_steps=s["train_gradient_accumulation_steps"],
        train_learning_rate=s["train_learning_rate"],
        train_num_inner_epochs=s["train_num_inner_epochs"],
        train_clip_range=s["train_clip_range"],
        train_adv_clip_max=s["train_adv_clip_max"],
        train_timestep_fraction=s["train_timestep_fraction"],
        train_max_grad_norm=s["train_max_grad_norm"],
        train_cfg=s["train_cfg"],
        per_prompt_stat_tracking=s["per_prompt_stat_tracking"],
        per_prompt_stat_tracking_buffer_size=s["per_prompt_stat_tracking_buffer_size"],
        per_prompt_stat_tracking_min_count=s["per_prompt_stat_tracking_min_count"],
    )
    prompt_list = prompts()
    rng = random.Random(args.seed)

    def prompt_fn():
        return rng.choice(prompt_list), {}

    t_load = time.perf_counter()
    pipeline = DefaultDDPOStableDiffusionPipeline(str(args.model_dir), use_lora=s["use_lora"])
    load_text_encoder(pipeline, args.model_dir)
    pipeline.set_progress_bar_config(disable=True)
    trainer = DDPOTrainer(config, jpeg_compressibility, prompt_fn, pipeline)
    load_s = time.perf_counter() - t_load

    timer = PhaseTimer()
    timer.wrap(trainer, "_generate_samples", "sampling_s")
    timer.wrap(trainer, "compute_rewards", "reward_s")
    timer.wrap(trainer, "_train_batched_samples", "training_s")
    ops = OpProfiler()
    if args.op_profile:
        ops.wrap(trainer, "_generate_samples", "sampling")
        ops.wrap(trainer, "_train_batched_samples", "training")

    cuda = torch.cuda.is_available()
    epochs = []
    global_step = 0
    for epoch in range(args.epochs):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        batches = config.sample_num_batches_per_epoch
        if epoch == 0 and args.warmup_batches:
            config.sample_num_batches_per_epoch = args.warmup_batches
        ops.active = epoch >= 1
        t0 = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        config.sample_num_batches_per_epoch = batches
        if cuda:
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
        phases = timer.take()
        row = {"epoch": epoch, "total_s": total, **phases}
        if epoch == 0 and args.warmup_batches:
            row["warmup_batches"] = args.warmup_batches
        if cuda:
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["overhead_s"] = total - sum(phases.values())
        epochs.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    if args.op_profile:
        ops.dump(args.op_profile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine_info(),
                "versions": versions(TRL_PACKAGES),
                "settings": s,
                "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                "load_s": load_s,
                "epochs": epochs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
