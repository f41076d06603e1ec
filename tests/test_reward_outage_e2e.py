"""`ddpo train` against a reward server that is killed (issue 12, item 2), end to end.

A real reward server is SIGKILLed mid-run and restarted ~25 s later: the run rides
it out and every item is scored once. One whose outage outlasts a small budget
fails the run; `--resume` finishes it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ddpo.server_process import RewardServerProcess, free_port
from tests.helpers.polling import wait_for
from trainer.checkpoint import latest_checkpoint
from trainer.run_log import read_metrics

# -- end to end: ddpo train against a reward server that is killed ----------------------

BASE = """
prompts = ["a red circle", "a blue square", "a green triangle"]
mixed_precision = "no"
resolution = 32
sample_num_steps = 4
sample_guidance_scale = 3.0
sample_batch_size = 4
sample_num_batches_per_epoch = 2
train_batch_size = 4
per_prompt_stat_tracking_min_count = 2
log_images_every = 0
"""
SAMPLES_PER_EPOCH = 8
SCORER = "jpeg_compressibility"


def write_config(tmp_path: Path, model: Path, url: str, extra: str = "") -> Path:
    text = f'pretrained_model = "{model}"\noutput_dir = "{tmp_path / "out"}"\n{BASE}\n'
    text += f'[[rewards]]\nurl = "{url}"\nscorer = "{SCORER}"\n{extra}\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def start_train(cfg: Path, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}  # rich: fewer wrapped lines
    cmd = [sys.executable, "-m", "ddpo.cli", "train", "--config", str(cfg), *args]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return " ".join(log.read_text().split())  # rich's wrapping undone


def scored_items(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf'^ddpo_scored_items_total{{scorer="{SCORER}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def kill(server: RewardServerProcess) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    server.stop()


@pytest.mark.slow
def test_train_rides_out_a_killed_and_restarted_reward_server(tmp_path, tiny_sd) -> None:
    epochs = 4
    port = free_port()
    server = RewardServerProcess([SCORER], port=port, log_file=tmp_path / "server1.log").start()
    cfg = write_config(tmp_path, tiny_sd, server.url)
    log = tmp_path / "train.log"
    proc = start_train(cfg, log, "--set", f"num_epochs={epochs}")
    restarted: RewardServerProcess | None = None
    try:
        wait_for(
            lambda: (tmp_path / "out/checkpoints/epoch_0001").is_dir() or proc.poll(),
            "epoch 1's checkpoint",
            limit_s=240,
        )
        # Hold the trainer while nothing is on the wire, so the first server's count is final.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            time.sleep(1.0)
            first_count = scored_items(server.url)
            kill(server)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(25)  # a server reloading its weights; the old client gave up after ~6 s
        restarted = RewardServerProcess([SCORER], port=port, log_file=tmp_path / "server2.log")
        restarted.start()
        output = finish(proc, log)
        assert proc.returncode == 0, output
        second_count = scored_items(restarted.url)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
        if restarted is not None:
            restarted.stop()
    records = read_metrics(tmp_path / "out")
    assert [r["epoch"] for r in records] == list(range(epochs))
    assert all(r["num_samples"] == SAMPLES_PER_EPOCH for r in records)
    assert all(np.isfinite(r["reward_mean"]) and r["num_dropped"] == 0 for r in records)
    # Every sample scored exactly once, across both server lifetimes.
    assert first_count + second_count == epochs * SAMPLES_PER_EPOCH
    assert second_count > 0
    assert f"reward server {server.url} is down" in output
    assert f"reward server {server.url} is back" in output


@pytest.mark.slow
def test_outage_past_the_budget_fails_the_run_and_resume_finishes_it(tmp_path, tiny_sd) -> None:
    epochs = 3
    port = free_port()
    server = RewardServerProcess([SCORER], port=port, log_file=tmp_path / "server1.log").start()
    cfg = write_config(tmp_path, tiny_sd, server.url, extra="outage_budget_s = 5.0")
    out = tmp_path / "out"
    log = tmp_path / "train.log"
    proc = start_train(cfg, log, "--set", f"num_epochs={epochs}")
    try:
        wait_for(
            lambda: (out / "checkpoints/epoch_0001").is_dir() or proc.poll(),
            "epoch 1's checkpoint",
            limit_s=240,
        )
        kill(server)
        output = finish(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 1, output
    assert "reward error" in output and server.url in output
    assert "past its outage budget (outage_budget_s = 5)" in output
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name.startswith("epoch_")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["epoch"] == int(ckpt.name.split("_")[1]) < epochs
    assert not list((out / "checkpoints").glob(".tmp*"))  # nothing half-written

    with RewardServerProcess([SCORER], port=port, log_file=tmp_path / "server2.log"):
        resumed = start_train(
            cfg, tmp_path / "resume.log", "--set", f"num_epochs={epochs}", "--resume"
        )
        output = finish(resumed, tmp_path / "resume.log")
    assert resumed.returncode == 0, output
    assert f"resumed from {ckpt}" in output
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == list(range(epochs))
    assert all(np.isfinite(r["reward_mean"]) for r in records)
    assert (out / "lora").is_dir()
