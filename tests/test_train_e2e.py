"""`ddpo train` end to end against the real reward server over loopback HTTP."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddpo.server_process import RewardServerProcess, free_port
from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow

BASE = """
prompts = ["a red circle", "a blue square", "a green triangle"]
mixed_precision = "no"
resolution = 32
sample_num_steps = 6
sample_guidance_scale = 3.0
sample_batch_size = 4
sample_num_batches_per_epoch = 2
train_batch_size = 2
per_prompt_stat_tracking_min_count = 2
log_images_every = 1
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with RewardServerProcess(["jpeg_compressibility", "jpeg_incompressibility"], log_file=log) as s:
        yield s


def write_config(tmp_path: Path, model: Path, url: str, extra: str = "") -> Path:
    """A tiny run's config: PPO (these tests are DDPO's) unless `extra` names an algorithm."""
    algorithm = "" if "train_algorithm" in tomllib.loads(extra) else 'train_algorithm = "ppo"\n'
    text = f'pretrained_model = "{model}"\noutput_dir = "{tmp_path / "out"}"\n{BASE}'
    text += f"{algorithm}{extra}\n"
    text += f'[[rewards]]\nurl = "{url}"\nscorer = "jpeg_compressibility"\nweight = 1.0\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def ddpo(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ddpo.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ddpo {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_train_writes_metrics_checkpoints_and_loadable_lora(tmp_path, server, tiny_sd):
    cfg = write_config(tmp_path, tiny_sd, server.url)
    ddpo(
        "train",
        "--config",
        str(cfg),
        "--set",
        "num_epochs=2",
        "--set",
        "train_gradient_accumulation_steps=2",
    )
    out = tmp_path / "out"
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0, 1]
    # 8 samples / train batch 2 = 4 batches per epoch, 2 accumulated per optimizer step.
    assert [r["global_step"] for r in records] == [2, 4]
    blob = torch.load(out / "checkpoints/epoch_0002/optimizer.pt", weights_only=True)
    adam_steps = {float(s["step"]) for s in blob["optimizer"]["state"].values()}
    assert adam_steps == {4.0}, "global_step must count optimizer steps"
    assert "log_ratio_abs_max" in records[0] and "old_log_prob_drift" in records[0]
    for r in records:
        for key in (
            "reward_mean",
            "reward_std",
            "num_samples",
            "time_total_s",
            "time_sampling_s",
            "time_reward_wait_s",
            "time_training_s",
            "cpu_threads",
            "approx_kl",
            "clipfrac",
        ):
            assert key in r, key
        assert r["num_samples"] == 8
        assert r["reward_mean"] < 0  # negated JPEG kB
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    from diffusers import StableDiffusionPipeline

    def sample(pipe):
        g = torch.Generator().manual_seed(0)
        return pipe(
            "a red circle",
            num_inference_steps=4,
            height=32,
            width=32,
            generator=g,
            output_type="np",
        ).images

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd))
    pipe.set_progress_bar_config(disable=True)
    before = sample(pipe)
    pipe.load_lora_weights(str(out / "lora"))
    assert pipe.unet.peft_config  # the adapter was attached
    after = sample(pipe)
    assert not np.allclose(before, after), "trained LoRA changed nothing"


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, server, tiny_sd):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    cfg_a = write_config(a, tiny_sd, server.url)
    cfg_b = write_config(b, tiny_sd, server.url)
    ddpo("train", "--config", str(cfg_a), "--set", "num_epochs=3")
    ddpo("train", "--config", str(cfg_b), "--set", "num_epochs=2")
    ddpo("train", "--config", str(cfg_b), "--set", "num_epochs=3", "--resume")

    ma, mb = read_metrics(a / "out"), read_metrics(b / "out")
    assert [r["epoch"] for r in mb] == [0, 1, 2]
    for ra, rb in zip(ma, mb, strict=True):
        assert ra["reward_mean"] == pytest.approx(rb["reward_mean"], abs=1e-6)
        assert ra["approx_kl"] == pytest.approx(rb["approx_kl"], rel=1e-4, abs=1e-12)
    wa = load_file(str(a / "out/checkpoints/epoch_0003/trainable.safetensors"))
    wb = load_file(str(b / "out/checkpoints/epoch_0003/trainable.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    state = json.loads((b / "out/checkpoints/epoch_0003/trainer_state.json").read_text())
    assert state["epoch"] == 3 and state["stat_tracker"]["buffers"]


def test_unknown_key_fails_before_work(tmp_path, tiny_sd):
    cfg = write_config(tmp_path, tiny_sd, "http://127.0.0.1:9")
    proc = ddpo("train", "--config", str(cfg), "--set", "num_epoch=3", check=False)
    assert proc.returncode == 2
    assert "num_epoch: unknown key" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_down_reward_server_fails_fast_naming_it(tmp_path, tiny_sd):
    url = f"http://127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path, tiny_sd, url)
    proc = ddpo("train", "--config", str(cfg), "--set", "num_epochs=1", check=False)
    assert proc.returncode == 1
    assert url in proc.stderr
    assert not (tmp_path / "out").exists()


def test_full_fine_tuning_in_bf16_resumes(tmp_path, server, tiny_sd):
    cfg = write_config(tmp_path, tiny_sd, server.url)
    common = ["--set", "use_lora=false", "--set", "mixed_precision=bf16"]
    ddpo("train", "--config", str(cfg), *common, "--set", "num_epochs=1")
    ddpo("train", "--config", str(cfg), *common, "--set", "num_epochs=2", "--resume")
    records = read_metrics(tmp_path / "out")
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(np.isfinite(r["approx_kl"]) for r in records)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(tmp_path / "out" / "unet"))
    base = UNet2DConditionModel.from_pretrained(str(tiny_sd), subfolder="unet")
    changed = any(
        not torch.equal(a, b) for a, b in zip(unet.parameters(), base.parameters(), strict=True)
    )
    assert changed, "full fine-tuning left the UNet unchanged"


def test_groups_kl_and_ema_train_and_resume_exactly(tmp_path, server, tiny_sd):
    """GRPO-style options together: group advantages, KL to the base model, EMA weights."""
    opts = [
        "--set",
        "sample_group_size=4",
        "--set",
        "train_kl_coef=0.05",
        "--set",
        "ema_decay=0.5",
        "--set",
        "train_learning_rate=3e-3",
    ]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    cfg_a = write_config(a, tiny_sd, server.url)
    cfg_b = write_config(b, tiny_sd, server.url)
    ddpo("train", "--config", str(cfg_a), "--set", "num_epochs=2", *opts)
    ddpo("train", "--config", str(cfg_b), "--set", "num_epochs=1", *opts)
    ddpo("train", "--config", str(cfg_b), "--set", "num_epochs=2", "--resume", *opts)
    records = read_metrics(a / "out")
    assert records[0]["kl_to_reference"] >= 0 and records[1]["kl_to_reference"] > 0
    for name in ("trainable.safetensors", "ema.safetensors"):
        wa = load_file(str(a / "out/checkpoints/epoch_0002" / name))
        wb = load_file(str(b / "out/checkpoints/epoch_0002" / name))
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    live = load_file(str(a / "out/checkpoints/epoch_0002/trainable.safetensors"))
    ema = load_file(str(a / "out/checkpoints/epoch_0002/ema.safetensors"))
    assert any(not torch.equal(live[k], ema[k]) for k in live)  # the average lags the weights


def test_step_baseline_scores_every_step_and_trains(tmp_path, server, tiny_sd):
    """`train_step_baseline`: the predicted images go to the reward server too."""
    cfg = write_config(tmp_path, tiny_sd, server.url)
    opts = ["--set", "sample_group_size=2", "--set", "train_step_baseline=true"]
    ddpo("train", "--config", str(cfg), "--set", "num_epochs=2", *opts)
    records = read_metrics(tmp_path / "out")
    assert len(records) == 2
    for r in records:
        # JPEG size of the first x0 prediction (near the mean image) says little of the final
        # one, of the last stochastic step's prediction nearly everything.
        assert 0 <= r["step_baseline_r2_first"] < r["step_baseline_r2_last"] <= 1
    assert (tmp_path / "out" / "lora" / "pytorch_lora_weights.safetensors").is_file()
