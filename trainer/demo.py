"""`ddpo demo`: the whole loop on the built-in tiny model, on a CPU, in minutes.

Starts a reward server subprocess, fine-tunes models/tiny-sd with DDPO through
it, and writes before/after images and a reward curve.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.shapes import all_prompts
from trainer.config import TrainConfig, apply_overrides, build_config

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILTIN_MODEL = REPO_ROOT / "models" / "tiny-sd"
DEMO_REWARDS = ("jpeg_incompressibility", "jpeg_compressibility", "prompt_fidelity")

#: Fixed prompts and seeds for the before/after comparison.
EVAL_PROMPTS = [
    "a red circle on a white background",
    "a blue square on a black background",
    "a green triangle on a gray background",
    "a yellow circle on a black background",
    "a red triangle on a gray background",
    "a blue circle on a white background",
]
EVAL_SEEDS = [101, 202]
DEMO_STEPS = 10


@dataclass
class DemoResult:
    output_dir: Path
    reward_before: float
    reward_after: float
    first_epoch_reward: float
    last_epoch_reward: float
    weights: Path


def demo_config(
    reward: str, epochs: int, output_dir: Path, server_url: str, model: Path
) -> TrainConfig:
    """Settings measured to raise the reward within a few minutes on 2 CPU cores."""
    return TrainConfig(
        pretrained_model=str(model),
        prompts=all_prompts(),
        output_dir=output_dir,
        seed=0,
        num_epochs=epochs,
        mixed_precision="no",
        # Full fine-tuning: on this 4M-parameter UNet LoRA on attention moved the
        # reward too slowly for a minutes-long demo (docs/tiny-model.md).
        use_lora=False,
        resolution=64,
        sample_num_steps=DEMO_STEPS,
        sample_guidance_scale=3.0,
        sample_batch_size=8,
        sample_num_batches_per_epoch=2,
        train_batch_size=8,
        train_timesteps_per_pass=DEMO_STEPS,
        train_learning_rate=1e-3,
        train_clip_range=0.1,
        per_prompt_stat_tracking=False,
        save_freq=max(1, epochs),
        log_images_every=max(1, epochs // 5),
        rewards=[{"url": server_url, "scorer": reward, "weight": 1.0}],
    )


@torch.no_grad()
def _eval_images(model: Path, trained: Path | None) -> np.ndarray:
    """Images for EVAL_PROMPTS x EVAL_SEEDS with the trainer's own sampler (eta 1).

    `trained` is the run's output: its lora/ (LoRA) or unet/ (full fine-tuning).
    """
    from diffusers import UNet2DConditionModel

    from trainer.families import load_family
    from trainer.sampling import sample_trajectories

    family = load_family(str(model), None, torch.device("cpu"), torch.float32)
    if trained is not None and (trained / "lora").is_dir():
        family.pipeline.load_lora_weights(str(trained / "lora"))
    elif trained is not None:
        family.pipeline.unet = UNet2DConditionModel.from_pretrained(str(trained / "unet"))
    prompts = [p for p in EVAL_PROMPTS for _ in EVAL_SEEDS]
    seeds = [s for _ in EVAL_PROMPTS for s in EVAL_SEEDS]
    trajs = sample_trajectories(
        family,
        family.unet,
        prompts,
        torch.arange(len(prompts)),
        seeds,
        num_steps=DEMO_STEPS,
        guidance_scale=3.0,
        eta=1.0,
        resolution=64,
    )
    return trajs.images


def _score(server_url: str, scorer: str, images: np.ndarray) -> np.ndarray:
    from trainer.config import RewardEndpoint
    from trainer.reward_client import RewardClient

    prompts = [p for p in EVAL_PROMPTS for _ in EVAL_SEEDS]
    with RewardClient([RewardEndpoint(url=server_url, scorer=scorer)]) as client:
        return client.submit(images, prompts).result(timeout=120).rewards


def _before_after_png(
    path: Path, before: np.ndarray, after: np.ndarray, sb: np.ndarray, sa: np.ndarray, name: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(before)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 4.2))
    prompts = [p for p in EVAL_PROMPTS for _ in EVAL_SEEDS]
    for i in range(n):
        for row, (imgs, scores, label) in enumerate(((before, sb, "before"), (after, sa, "after"))):
            ax = axes[row, i]
            ax.imshow(imgs[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{scores[i]:.2f}", fontsize=7)
            if i == 0:
                ax.set_ylabel(label, fontsize=9)
        title = prompts[i].removeprefix("a ").replace(" on a ", "\non ")
        axes[0, i].set_title(title, fontsize=6)
    fig.suptitle(
        f"DDPO on the built-in tiny model, reward {name}: "
        f"mean {sb.mean():.3f} before -> {sa.mean():.3f} after (same prompts and seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _reward_curve_png(path: Path, records: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    mean = np.array([r["reward_mean"] for r in records])
    std = np.array([r["reward_std"] for r in records])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, mean, marker="o", label="mean")
    ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, label="± std")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"reward ({name})")
    ax.set_title("Reward of each epoch's samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(
    reward: str = "jpeg_incompressibility",
    epochs: int = 15,
    output_dir: Path = Path("outputs/demo"),
    model: Path = BUILTIN_MODEL,
    console=None,
    overrides: list[str] | None = None,
) -> DemoResult:
    """Run the demo; the reward server child is stopped however this exits."""
    from trainer.run_log import read_metrics
    from trainer.server_process import RewardServerProcess
    from trainer.train import train

    say = console.print if console is not None else print
    if reward not in DEMO_REWARDS:
        raise ValueError(f"unknown demo reward {reward!r}; choose from {', '.join(DEMO_REWARDS)}")
    if overrides:  # fail on a bad override before starting anything
        build_config(
            apply_overrides(
                demo_config(reward, epochs, output_dir, "x", model).model_dump(mode="json"),
                list(overrides),
            )
        )
    if not (Path(model) / "model_index.json").is_file():
        raise FileNotFoundError(f"no diffusers pipeline at {model} (model_index.json missing)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    server = RewardServerProcess(
        [reward],
        log_file=output_dir / "reward_server.log",
        extra_env={"OMP_NUM_THREADS": "1"},
    )
    say(f"starting the reward server ({reward}) ...")
    with server:
        say(f"reward server ready at {server.url} (pid {server.proc.pid})")
        say("sampling the base model on the evaluation prompts ...")
        before = _eval_images(model, None)
        score_before = _score(server.url, reward, before)
        cfg = demo_config(reward, epochs, output_dir, server.url, model)
        if overrides:
            data = apply_overrides(cfg.model_dump(mode="json"), overrides)
            cfg = build_config(data)
        say(f"fine-tuning with DDPO for {epochs} epochs ...")
        train(cfg)
        after = _eval_images(model, output_dir)
        score_after = _score(server.url, reward, after)

    records = read_metrics(output_dir)
    _before_after_png(
        output_dir / "before_after.png", before, after, score_before, score_after, reward
    )
    _reward_curve_png(output_dir / "reward_curve.png", records, reward)
    result = DemoResult(
        output_dir=output_dir,
        reward_before=float(score_before.mean()),
        reward_after=float(score_after.mean()),
        first_epoch_reward=records[0]["reward_mean"],
        last_epoch_reward=records[-1]["reward_mean"],
        weights=output_dir / ("lora" if cfg.use_lora else "unet"),
    )
    (output_dir / "demo_summary.json").write_text(
        json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()})
    )
    return result
