"""Does Flow-GRPO-style training raise a reward on models/tiny-flux? Before/after, measured.

Starts a reward server with `prompt_fidelity`, scores a fixed grid (every
prompt x fixed seeds, the trainer's own SDE sampler), trains with `ddpo train`'s
loop, and scores the same grid again.

    nice -n 10 python tools/tiny_flow_rl.py --model models/tiny-flux --epochs 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shared.shapes import all_prompts
from trainer.config import RewardEndpoint, TrainConfig

STEPS = 10
NOISE_LEVEL = 0.7  # Flow-GRPO's a for SD3.5
EVAL_SEEDS = (1001, 1002)


def flow_config(
    model: Path, url: str, out: Path, epochs: int, lr: float, reward: str
) -> TrainConfig:
    """The tiny model's flow recipe: Flow-GRPO's SDE and groups, the demo's step size."""
    return TrainConfig(
        pretrained_model=str(model),
        prompts=all_prompts(),
        output_dir=out,
        num_epochs=epochs,
        mixed_precision="no",
        use_lora=False,
        resolution=64,
        sample_num_steps=STEPS,
        sample_eta=NOISE_LEVEL,
        sample_guidance_scale=1.0,  # no guidance embedding, no CFG: one pass per step
        train_cfg=False,
        sample_batch_size=8,
        sample_num_batches_per_epoch=2,
        sample_group_size=4,
        train_batch_size=8,
        train_timesteps_per_pass=3,
        train_timestep_fraction=0.99,
        train_learning_rate=lr,
        train_clip_range=0.1,
        save_freq=epochs,
        log_images_every=0,
        rewards=[{"url": url, "scorer": reward}],
    )


@torch.no_grad()
def grid_rewards(model: Path, trained: Path | None, url: str, reward: str) -> np.ndarray:
    from diffusers import FluxTransformer2DModel

    from trainer.families import load_family
    from trainer.reward_client import RewardClient
    from trainer.sampling import sample_trajectories

    family = load_family(str(model), None, torch.device("cpu"), torch.float32)
    if trained is not None:
        family.pipeline.transformer = FluxTransformer2DModel.from_pretrained(str(trained))
    prompts = [p for p in all_prompts() for _ in EVAL_SEEDS]
    seeds = [s for _ in all_prompts() for s in EVAL_SEEDS]
    images = sample_trajectories(
        family,
        family.denoiser,
        prompts,
        torch.arange(len(prompts)),
        seeds,
        num_steps=STEPS,
        guidance_scale=1.0,
        eta=NOISE_LEVEL,
        resolution=64,
    ).images
    with RewardClient([RewardEndpoint(url=url, scorer=reward)]) as client:
        return np.asarray(client.submit(images, prompts).result(timeout=300).rewards)


def main() -> None:
    from ddpo.server_process import RewardServerProcess
    from trainer.run_log import read_metrics
    from trainer.train import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--reward", default="prompt_fidelity")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp()) / "run"
    torch.set_num_threads(1)
    with RewardServerProcess([args.reward]) as server:
        before = grid_rewards(args.model, None, server.url, args.reward)
        print(f"before: {args.reward} {before.mean():.3f} over {before.size} images", flush=True)
        t0 = time.perf_counter()
        train(flow_config(args.model, server.url, out, args.epochs, args.lr, args.reward))
        minutes = (time.perf_counter() - t0) / 60
        after = grid_rewards(args.model, out / "transformer", server.url, args.reward)
    per_epoch = [r["reward_mean"] for r in read_metrics(out)]
    print(f"after {args.epochs} epochs ({minutes:.1f} min): {after.mean():.3f}")
    print("epoch reward means:", " ".join(f"{r:.2f}" for r in per_epoch))


if __name__ == "__main__":
    main()
