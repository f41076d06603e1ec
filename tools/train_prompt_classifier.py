"""Train the prompt-fidelity classifier (shape, colour, background) on fresh procedural images.

Augmented with blur, noise, tone shifts and down/up-sampling so it judges diffusion samples
(soft edges, colour drift) the way it judges clean drawings.
Run: python tools/train_prompt_classifier.py --out models/prompt-fidelity
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from reward_server.scorers.prompt_fidelity import build_net, default_config  # noqa: E402
from shared import shapes  # noqa: E402


def make_batch(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random clean images in [-1, 1] and their (shape, colour, background) indices."""
    triples = shapes.all_triples()
    picks = rng.integers(len(triples), size=n)
    imgs, labels = [], []
    for p in picks:
        s, c, b = triples[p]
        imgs.append(shapes.draw(s, c, b, rng))
        labels.append(
            (shapes.SHAPES.index(s), shapes.COLOURS.index(c), shapes.BACKGROUNDS.index(b))
        )
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.tensor(labels)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, resample, tone shift and noise, each on a random subset of the batch."""
    n = len(x)

    def some(p: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen) < p).view(n, 1, 1, 1)

    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 256.0).expand(3, 1, 5, 5)
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
    x = torch.where(some(0.4), blurred, x)
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)
    x = torch.where(some(0.3), F.interpolate(small, size=x.shape[-2:], mode="bilinear"), x)
    shift = 0.12 * torch.randn(n, 3, 1, 1, generator=gen)
    gain = 1 + 0.1 * torch.randn(n, 1, 1, 1, generator=gen)
    x = torch.where(some(0.5), x * gain + shift, x)
    sigma = 0.15 * torch.rand(n, 1, 1, 1, generator=gen)
    x = torch.where(some(0.5), x + sigma * torch.randn(x.shape, generator=gen), x)
    return x.clamp(-1, 1)


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    net.eval()
    logits = net(x)
    return [float((lg.argmax(-1) == y[:, k]).float().mean()) for k, lg in enumerate(logits)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models/prompt-fidelity"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    config = default_config()
    net = build_net(config)
    print(f"params {sum(p.numel() for p in net.parameters()) / 1e6:.3f}M", flush=True)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    val_x, val_y = make_batch(720, np.random.default_rng(args.seed + 10_000))
    start = time.time()
    for step in range(1, args.steps + 1):
        net.train()
        x, y = make_batch(args.batch, rng)
        logits = net(augment(x, gen))
        loss = sum(F.cross_entropy(lg, y[:, k]) for k, lg in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps:
            acc = accuracy(net, val_x, val_y)
            print(
                f"step {step} loss {loss.item():.4f} val acc shape/colour/bg "
                f"{acc[0]:.3f}/{acc[1]:.3f}/{acc[2]:.3f} {time.time() - start:.0f}s",
                flush=True,
            )
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    net.eval()
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, args.out / "model.safetensors"
    )
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"saved to {args.out} after {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
