"""Would batching a train batch's timesteps into fewer UNet passes pay on this model?

The PPO update (trainer/ppo.py) runs one forward + backward per (train batch,
timestep): 20 passes of batch 2 x 3 (CFG) per train batch here. Gradients
accumulate over all those timesteps before one optimizer step anyway, so k
timesteps could share one pass of batch 2 x 3 x k with the same gradient (the
loss summed instead of accumulated). This times the LoRA UNet's forward +
backward for one train batch (3 samples x 20 timesteps) at k = 1, 5, 20, and
the share of attention in one pass (torch.profiler), on the benchmark pipeline.

    python benchmarks/train_batching.py --repeats 3

Writes benchmarks/results/train_batching.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import (
    OUR_PACKAGES,
    build_bench_pipeline,
    default_pipeline_dir,
    machine_info,
    summarize,
    versions,
    write_result,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--out", default="train_batching")
    args = ap.parse_args()

    import torch

    from trainer.config import TrainConfig
    from trainer.families import load_family
    from trainer.lora import add_lora

    torch.set_num_threads(1)
    info = machine_info()
    model_dir = build_bench_pipeline(default_pipeline_dir())
    cfg = TrainConfig(
        pretrained_model=str(model_dir),
        train_algorithm="ppo",
        prompts=["cat"],
        rewards=[{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
        mixed_precision="no",
    )
    family = load_family(str(model_dir), None, torch.device("cpu"), torch.float32)
    unet = family.unet
    add_lora(unet, cfg)
    unet.train()
    res = family.default_resolution
    c, h, w = family.latent_shape(res)
    samples, steps = 3, 20
    cond = family.encode_prompts(["cat", "dog", "fox"], res)
    uncond = family.encode_unconditional(res)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(samples, steps, c, h, w, generator=gen)
    timesteps = torch.linspace(951, 1, steps).long()

    def one_train_batch(k: int) -> float:
        t0 = time.perf_counter()
        for start in range(0, steps, k):
            idx = list(range(start, min(start + k, steps)))
            x = latents[:, idx].reshape(-1, c, h, w)
            t = timesteps[idx].repeat(samples)
            emb = {n: v.repeat_interleave(len(idx), 0) for n, v in cond.items()}
            unc = {n: v.expand(x.shape[0], *v.shape[1:]) for n, v in uncond.items()}
            out = family.predict(unet, x, t, emb, unc, 5.0)
            (out.float().square().mean() * len(idx) / steps).backward()
        unet.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    one_train_batch(steps)  # warm-up
    rows = {}
    for _ in range(args.repeats):  # interleaved, so drift hits every k alike
        for k in args.group_sizes:
            rows.setdefault(k, []).append(one_train_batch(k))
    print("forward + backward of one train batch (3 samples x 20 timesteps, CFG), seconds")
    print(f"{'timesteps/pass':>15}{'UNet batch':>11}{'min':>8}{'median':>8}{'vs k=1':>8}")
    base = summarize(rows[args.group_sizes[0]])["median"]
    table = {}
    for k, vals in rows.items():
        st = summarize(vals)
        st["speedup_vs_first"] = base / st["median"]
        table[str(k)] = st
        print(
            f"{k:>15}{2 * samples * k:>11}{st['min']:>8.2f}{st['median']:>8.2f}"
            f"{st['speedup_vs_first']:>7.2f}x"
        )

    from torch.profiler import profile

    x = latents[:, 0]
    with profile() as prof:
        unc = {n: v.expand(samples, *v.shape[1:]) for n, v in uncond.items()}
        out = family.predict(unet, x, timesteps[:1].repeat(samples), cond, unc, 5.0)
        out.float().square().mean().backward()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    attn = sum(e.self_cpu_time_total for e in events if "attention" in e.key.lower())
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    print(f"\none pass (batch 6, forward + backward): attention kernels {100 * attn / total:.1f}%")
    for e in top:
        print(f"  {100 * e.self_cpu_time_total / total:5.1f}%  {e.key}")
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    path = write_result(
        args.out,
        {
            "command": command,
            "machine": info,
            "versions": versions(OUR_PACKAGES),
            "per_train_batch_s": table,
            "attention_share_of_pass": attn / total,
            "top_ops": [{"op": e.key, "share": e.self_cpu_time_total / total} for e in top],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
