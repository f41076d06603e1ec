"""DDPO learns: the JPEG reward of the built-in tiny model rises within a few epochs.

Settings chosen by measurement (docs/benchmarks.md, "learning"): on this tiny model the
incompressibility reward rises reliably in a CPU test budget (1.71 -> 2.37 kB in 8
epochs), while compressibility barely moves in 10 epochs at any stable learning rate.
"""

from pathlib import Path

import pytest

from ddpo.server_process import RewardServerProcess
from tests.test_train_e2e import ddpo
from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow

MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-sd"


def test_jpeg_reward_rises(tmp_path):
    with RewardServerProcess(["jpeg_incompressibility"], log_file=tmp_path / "s.log") as server:
        cfg = tmp_path / "learn.toml"
        cfg.write_text(
            f"""
pretrained_model = "{MODEL}"
prompts = ["a red circle on a white background", "a blue square on a black background"]
output_dir = "{tmp_path / "out"}"
train_algorithm = "ppo"
mixed_precision = "no"
use_lora = false
resolution = 64
num_epochs = 6
save_freq = 100
log_images_every = 0
sample_num_steps = 10
sample_guidance_scale = 3.0
sample_batch_size = 8
sample_num_batches_per_epoch = 2
train_batch_size = 8
train_timesteps_per_pass = 10
train_learning_rate = 1e-3
train_clip_range = 0.1
per_prompt_stat_tracking_min_count = 4

[[rewards]]
url = "{server.url}"
scorer = "jpeg_incompressibility"
"""
        )
        ddpo("train", "--config", str(cfg))
    rewards = [r["reward_mean"] for r in read_metrics(tmp_path / "out")]
    first, last = rewards[0], sum(rewards[-2:]) / 2
    print(f"\njpeg_incompressibility by epoch: {[round(r, 3) for r in rewards]}")
    assert last > first + 0.2, rewards
