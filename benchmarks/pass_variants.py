"""Do the field's usual CPU speed-ups pay on our UNet passes? Timed side by side in one process.

One guided sampling forward (2 x sample batch rows) and one training pass
(forward + backward of the LoRA UNet, 2 x train batch rows, then the PPO step's
Gaussian log-prob) with the settings of `_common.SETTINGS`, each variant in
turn, rounds alternating in order, median and min per variant:

- base: what trainer/sampling.py and trainer/ppo.py do (no_grad sampling);
- inference_mode: sampling under torch.inference_mode instead of no_grad;
- channels_last: UNet weights and inputs in channels_last memory format;
- fused_adamw: the optimizer step over the LoRA parameters, torch.optim.AdamW
  (for-loop, our default and trl's) vs fused=True vs foreach=True.

    python benchmarks/pass_variants.py --model-dir models/tiny-sd --rounds 5

Threads: torch's default (all cores) unless --threads. Writes
benchmarks/results/pass_variants.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import (
    OUR_PACKAGES,
    SETTINGS,
    build_bench_pipeline,
    default_pipeline_dir,
    machine_info,
    versions,
    write_result,
)


def measure(model_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    """Seconds per pass of each variant on one pipeline."""
    import torch

    from trainer.config import TrainConfig
    from trainer.families import load_family
    from trainer.lora import add_lora

    s = SETTINGS
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
    res = family.default_resolution
    c, h, w = family.latent_shape(res)
    family.set_timesteps(s["sample_num_steps"], (c, h, w))
    sb, tb = s["sample_batch_size"], s["train_batch_size"]
    words = ["cat", "dog", "fox", "owl", "elk", "bee"]
    cond_s = family.encode_prompts(words[:sb], res)
    cond_t = family.encode_prompts(words[:tb], res)
    uncond = family.encode_unconditional(res)
    gen = torch.Generator().manual_seed(0)
    x_s = torch.randn(sb, c, h, w, generator=gen)
    x_t = torch.randn(tb, c, h, w, generator=gen)
    x_next = torch.randn(tb, c, h, w, generator=gen)
    t_s = torch.full((sb,), 501)
    t_t = torch.tensor([901, 501, 101][:tb])
    params = [p for p in unet.parameters() if p.requires_grad]
    g = 5.0

    def unc(n):
        return {k: v.expand(n, *v.shape[1:]) for k, v in uncond.items()}

    def sample_pass(mode, fmt) -> None:
        with mode():
            for _ in range(args.reps):
                family.predict(unet, x_s.to(memory_format=fmt), t_s, cond_s, unc(sb), g)

    def train_pass(fmt) -> None:
        unet.train()
        for _ in range(args.reps):
            out = family.predict(unet, x_t.to(memory_format=fmt), t_t, cond_t, unc(tb), g)
            mean, std = family.step_mean_std(out.float(), t_t, x_t, 1.0)
            lp = (-((x_next - mean) ** 2) / (2 * std**2)).mean(dim=(1, 2, 3))
            (lp.exp().mean() / args.reps).backward()
        unet.eval()

    def grads() -> None:
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3

    optims = {
        "adamw_for_loop": torch.optim.AdamW(params, lr=0.0, foreach=False),
        "adamw_foreach": torch.optim.AdamW(params, lr=0.0, foreach=True),
        "adamw_fused": torch.optim.AdamW(params, lr=0.0, fused=True),
    }

    def optim_step(name) -> None:
        for _ in range(args.reps * 10):
            grads()
            optims[name].step()

    cl, cf = torch.channels_last, torch.contiguous_format
    variants = {
        "sampling base (no_grad)": lambda: sample_pass(torch.no_grad, cf),
        "sampling inference_mode": lambda: sample_pass(torch.inference_mode, cf),
        "sampling channels_last": lambda: sample_pass(torch.no_grad, cl),
        "training base": lambda: train_pass(cf),
        "training channels_last": lambda: train_pass(cl),
        **{f"optimizer {n} (x10)": (lambda n=n: optim_step(n)) for n in optims},
    }
    times: dict[str, list[float]] = {n: [] for n in variants}
    for name in variants:  # warm-up
        _set_format(unet, cl if "channels_last" in name else cf, torch)
        variants[name]()
    for r in range(args.rounds):
        names = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in names:
            _set_format(unet, cl if "channels_last" in name else cf, torch)
            t0 = time.perf_counter()
            variants[name]()
            times[name].append((time.perf_counter() - t0) / args.reps)
    _set_format(unet, cf, torch)
    table = {n: {"median_s": statistics.median(v), "min_s": min(v)} for n, v in times.items()}
    print(f"\n{model_dir.name}: seconds per pass, {args.rounds} rounds")
    for n, row in table.items():
        print(f"  {n:<32}{row['median_s']:>10.4f}{row['min_s']:>10.4f}")
    return {"per_pass": table, "times": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, action="append", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="passes per timing")
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--out", default="pass_variants")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    dirs = args.model_dir or [build_bench_pipeline(default_pipeline_dir())]
    results = {d.name: measure(d, args) for d in dirs}
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    path = write_result(
        args.out,
        {
            "command": command,
            "machine": info,
            "versions": versions(OUR_PACKAGES),
            "threads": torch.get_num_threads(),
            "results": results,
        },
    )
    print(f"wrote {path}")


def _set_format(unet, fmt, torch) -> None:
    """Convolution weights in `fmt` (channels_last or contiguous)."""
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=fmt)


if __name__ == "__main__":
    main()
