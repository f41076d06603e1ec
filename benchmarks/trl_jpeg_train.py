"""trl's side of benchmarks/jpeg_transfer.py: DDPOTrainer at its defaults, then save the LoRA.

Runs in benchmarks/.venv-trl. DDPOConfig keeps every default (LoRA r 4, lr 3e-4,
clip 1e-4, 50 DDIM steps, guidance 5, eta 1, train batch 1, no per-prompt stat
tracking) except what the budget needs: num_epochs, seed and sample_batch_size
(samples = sample_batch_size x 2 batches x epochs), and where jpeg_transfer.py
is given a CPU budget, sample_num_steps and train_batch_size; mixed_precision stays trl's
fp16 unless --mixed-precision says (jpeg_transfer.py says "no" on a CPU, where
fp16 is emulated and ~26x slower). The reward is
trl_ddpo_epoch.jpeg_compressibility (quality 95, kB negated, on uint8 pixels),
the reward server's scorer computed in-process; with --reward-url, any scorer of a running
reward server instead, over its HTTP API (POST /v1/score), as a user plugs in an endpoint.
Writes per-epoch reward mean and
approx_kl (what trl logs) and the sampler settings, for the held-out evaluation.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

from trl_ddpo_epoch import jpeg_compressibility, load_text_encoder


def http_reward(url: str, scorer: str):
    """trl's reward_fn scoring through a reward server: (images in [0, 1], prompts, _)."""
    import base64
    import io
    import urllib.request

    import numpy as np
    import torch
    from PIL import Image

    def reward_fn(images, prompts, metadata):
        items = []
        for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            pixels = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
            data = base64.b64encode(buf.getvalue()).decode()
            items.append({"id": str(i), "prompt": prompt, "image": {"data": data}})
        body = json.dumps({"scorer": scorer, "items": items}).encode()
        request = urllib.request.Request(
            url.rstrip("/") + "/v1/score", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            scores = json.loads(response.read())["scores"]
        return torch.tensor(np.asarray(scores, dtype=np.float32)), {}

    return reward_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--prompts", required=True, help="JSON list")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-batch-size", type=int, required=True)
    ap.add_argument("--sample-num-steps", type=int, default=None, help="default: trl's (50)")
    ap.add_argument("--train-batch-size", type=int, default=None, help="default: trl's (1)")
    ap.add_argument("--mixed-precision", default=None, help="default: trl's (fp16)")
    ap.add_argument("--reward-url", default=None, help="a reward server; default: JPEG in-process")
    ap.add_argument("--scorer", default="jpeg_compressibility", help="with --reward-url")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop after this training")
    ap.add_argument("--save-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--save-every", type=int, default=0, help="also save SAVE_DIR/epoch_N every N epochs"
    )
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    logdir = tempfile.mkdtemp(prefix="trl-jpeg-")
    kwargs = {}
    if args.sample_num_steps is not None:
        kwargs["sample_num_steps"] = args.sample_num_steps
    if args.train_batch_size is not None:
        kwargs["train_batch_size"] = args.train_batch_size
    if args.mixed_precision is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    config = DDPOConfig(
        num_epochs=args.epochs,
        seed=args.seed,
        sample_batch_size=args.sample_batch_size,
        save_freq=10**9,  # no accelerate checkpoints; the LoRA is saved once at the end
        log_with=None,
        logdir=logdir,
        project_kwargs={"project_dir": logdir},
        **kwargs,
    )
    prompt_list = json.loads(args.prompts)
    rng = random.Random(args.seed)

    def prompt_fn():
        return rng.choice(prompt_list), {}

    pipeline = DefaultDDPOStableDiffusionPipeline(str(args.model_dir))  # trl default: LoRA
    load_text_encoder(pipeline, args.model_dir)
    pipeline.set_progress_bar_config(disable=True)
    reward = http_reward(args.reward_url, args.scorer) if args.reward_url else jpeg_compressibility
    trainer = DDPOTrainer(config, reward, prompt_fn, pipeline)

    logged: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    inner_log = trainer.accelerator.log

    def capture(values: dict, step: int | None = None, **kw) -> None:
        epoch = int(values.get("epoch", -1))
        for key in ("reward_mean", "reward_std", "approx_kl", "clipfrac"):
            if key in values:
                logged[epoch][key].append(float(values[key]))
        inner_log(values, step=step, **kw)

    trainer.accelerator.log = capture
    global_step, train_s, epoch_s = 0, 0.0, []
    for epoch in range(config.num_epochs):
        t0 = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        epoch_s.append(time.perf_counter() - t0)  # checkpoint writing below not counted
        train_s += epoch_s[-1]
        if args.save_every and (epoch + 1) % args.save_every == 0:
            pipeline.save_pretrained(str(args.save_dir / f"epoch_{epoch + 1}"))
        if args.max_minutes is not None and train_s > args.max_minutes * 60:
            break
    pipeline.save_pretrained(str(args.save_dir))  # trl's own save: the LoRA in diffusers format

    epochs = [
        {
            "epoch": e,
            "time_total_s": epoch_s[e],  # the name of ours in metrics.jsonl
            **{k: sum(v) / len(v) for k, v in logged[e].items()},
        }
        for e in range(len(epoch_s))
    ]
    args.out.write_text(
        json.dumps(
            {
                "train_s": train_s,
                "epochs": epochs,
                "sampler": {
                    "steps": config.sample_num_steps,
                    "guidance": config.sample_guidance_scale,
                    "eta": config.sample_eta,
                },
                "lora_scale": 1.0,  # trl's DefaultDDPOStableDiffusionPipeline: r 4, alpha 4
                "config": {
                    k: v
                    for k, v in config.to_dict().items()
                    if k.startswith(
                        ("sample", "train", "per_prompt", "mixed", "num_epochs", "seed")
                    )
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
