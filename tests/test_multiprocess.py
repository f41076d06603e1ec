"""Two CPU processes (torchrun, gloo): both sample, rewards gathered, rank 0 writes, resume."""

import os
import shutil
import subprocess
import sys

import pytest

from ddpo.server_process import RewardServerProcess, free_port
from tests.test_train_e2e import write_config
from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(free_port()), "-m", "ddpo.cli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


def test_two_processes_train_checkpoint_and_resume(tmp_path, tiny_sd):
    if shutil.which("torchrun") is None and sys.platform != "linux":
        pytest.skip("torchrun unavailable")
    log = tmp_path / "server.log"
    with RewardServerProcess(["jpeg_compressibility"], log_file=log) as server:
        cfg = write_config(tmp_path, tiny_sd, server.url)
        torchrun("train", "--config", str(cfg), "--set", "num_epochs=1")
        torchrun("train", "--config", str(cfg), "--set", "num_epochs=2", "--resume")
        import httpx

        metrics = httpx.get(f"{server.url}/metrics").text
    records = read_metrics(tmp_path / "out")
    # One writer: one line per epoch, not one per rank; both ranks' samples counted.
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["num_samples"] == 16 for r in records)  # 2 ranks x 4 x 2
    # Each sample scored exactly once: 2 epochs x 16 images reached the server.
    scored = [
        line
        for line in metrics.splitlines()
        if line.startswith("ddpo_scored_items_total") and "jpeg_compressibility" in line
    ]
    assert scored and float(scored[0].split()[-1]) == 32.0, scored
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "epoch_0001",
        "epoch_0002",
    ]
    assert (tmp_path / "out" / "lora" / "pytorch_lora_weights.safetensors").is_file()
