"""Settings that must agree are rejected with both numbers named; stats are global."""

import os
import socket

import pytest
import torch.multiprocessing as mp

from trainer.config import ConfigError, TrainConfig, build_config
from trainer.train import optimizer_steps_per_epoch

BASE = {
    "pretrained_model": "m",
    "prompts": ["a"],
    "rewards": [{"url": "http://127.0.0.1:1", "scorer": "s"}],
    "sample_batch_size": 6,
    "sample_num_batches_per_epoch": 2,
    "train_batch_size": 3,
}


def test_accumulation_must_divide_the_train_batches_of_an_epoch():
    # 12 samples / 3 per train batch = 4 batches: 3 does not divide them.
    with pytest.raises(ConfigError) as err:
        build_config({**BASE, "train_gradient_accumulation_steps": 3})
    msg = str(err.value)
    assert "train_gradient_accumulation_steps (3)" in msg and "(4 = 12 samples" in msg
    for ok in (1, 2, 4):
        cfg = build_config({**BASE, "train_gradient_accumulation_steps": ok})
        assert optimizer_steps_per_epoch(cfg) == 4 // ok


def test_global_step_counts_optimizer_steps_over_inner_epochs():
    cfg = build_config(
        {**BASE, "train_gradient_accumulation_steps": 2, "train_num_inner_epochs": 3}
    )
    assert optimizer_steps_per_epoch(cfg) == 3 * 4 // 2


def test_training_without_guidance_needs_sampling_without_guidance():
    ppo = {**BASE, "train_algorithm": "ppo", "train_cfg": False}
    with pytest.raises(ConfigError, match="off-policy"):
        build_config({**ppo, "sample_guidance_scale": 5.0})
    cfg = build_config({**ppo, "sample_guidance_scale": 1.0})
    assert not cfg.train_cfg


def test_a_config_naming_no_algorithm_trains_nft_without_guidance():
    """The measured default (docs/learning.md); PPO keeps its own guidance default."""
    cfg = build_config(BASE)
    assert (cfg.train_algorithm, cfg.sample_guidance_scale) == ("nft", 1.0)
    ppo = build_config({**BASE, "train_algorithm": "ppo"})
    assert ppo.sample_guidance_scale == 5.0
    assert build_config({**BASE, "sample_guidance_scale": 4.0}).sample_guidance_scale == 4.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_stats(rank: int, port: int, queue) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from accelerate import Accelerator

    from trainer.train import global_stats

    accelerator = Accelerator(cpu=True)
    local = {"loss": 1.0 + rank, "clipfrac": 0.5 * rank, "log_ratio_abs_max": 3.0 - 2 * rank}
    queue.put((rank, global_stats(accelerator, local)))
    accelerator.wait_for_everyone()


def test_ppo_statistics_are_averaged_over_ranks():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_stats, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):  # every rank logs the same, global figures
        stats = results[rank]
        assert stats["loss"] == pytest.approx(1.5)
        assert stats["clipfrac"] == pytest.approx(0.25)
        assert stats["log_ratio_abs_max"] == pytest.approx(3.0)  # the largest, not the mean


def test_single_process_statistics_pass_through():
    from accelerate import Accelerator

    from trainer.train import global_stats

    local = {"loss": 0.25, "old_log_prob_drift": 1e-3, "a_new_statistic": 2.0}
    stats = global_stats(Accelerator(cpu=True), local)
    assert stats == pytest.approx(local)  # one not named anywhere is kept (averaged), not dropped


def test_fp16_without_a_gpu_trains_in_float32(caplog):
    from trainer.train import precision_for_device

    cfg = TrainConfig(
        pretrained_model="x",
        prompts=["a"],
        rewards=[{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
        mixed_precision="fp16",
    )
    with caplog.at_level("WARNING"):
        assert precision_for_device(cfg, cuda=False).mixed_precision == "no"
    assert "26x slower" in caplog.text
    assert precision_for_device(cfg, cuda=True).mixed_precision == "fp16"
    bf16 = cfg.model_copy(update={"mixed_precision": "bf16"})
    assert precision_for_device(bf16, cuda=False).mixed_precision == "bf16"
