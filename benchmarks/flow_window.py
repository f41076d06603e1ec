"""Sampling and PPO time per epoch on the tiny SD3 pipeline: the whole chain vs an SDE window.

nice -n 10 python benchmarks/flow_window.py  (docs/flow_matching.md quotes its output)
"""

import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from trainer.config import TrainConfig
from trainer.families import load_family
from trainer.ppo import ppo_update
from trainer.random_flow_pipeline import build_random_sd3
from trainer.sampling import sample_trajectories
from trainer.sde_window import sde_window
from trainer.train import prepare_trainable_unet

torch.set_num_threads(1)
model = build_random_sd3(Path(tempfile.mkdtemp()) / "sd3")
for size in (0, 3):
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = TrainConfig(
        pretrained_model=str(model),
        train_algorithm="ppo",
        prompts=["a"],
        rewards=[{"url": "http://x:1", "scorer": "s"}],
        mixed_precision="no",
        resolution=32,
        sample_num_steps=10,
        sample_eta=0.7,
        sample_guidance_scale=4.5,
        sample_batch_size=8,
        sample_num_batches_per_epoch=1,
        train_batch_size=4,
        train_timestep_fraction=1.0 if size else 0.99,
        sample_sde_window_size=size,
        sample_sde_window_range=[0, 5] if size else None,
        train_recompute_old_log_probs="never",
    )
    acc = Accelerator(cpu=True)
    fam = load_family(str(model), None, acc.device, torch.float32)
    torch.manual_seed(0)
    net = prepare_trainable_unet(cfg, fam, acc)
    net, opt = acc.prepare(
        net, torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=3e-4)
    )
    uncond = fam.encode_unconditional(32)
    ts, tt = [], []
    for epoch in range(3):
        t0 = time.perf_counter()
        trajs = sample_trajectories(
            fam,
            net,
            ["a red circle"] * 8,
            torch.zeros(8, dtype=torch.long),
            list(range(8)),
            10,
            4.5,
            0.7,
            32,
            uncond=uncond,
            window=sde_window(cfg, epoch, 0, 0),
        )
        t1 = time.perf_counter()
        ppo_update(
            acc, fam, net, opt, trajs, torch.randn(8), cfg, torch.Generator().manual_seed(0), uncond
        )
        t2 = time.perf_counter()
        ts.append(t1 - t0)
        tt.append(t2 - t1)
    stored = trajs.log_probs.shape[1]
    print(
        f"window {size or 'none'}: stored steps {stored}, sampling {min(ts):.2f} s, "
        f"training {min(tt):.2f} s (best of 3)"
    )
