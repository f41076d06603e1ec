"""Measure the tiny model's prompt fidelity: sample every prompt on held-out seeds and ask
the prompt-fidelity classifier whether shape, colour and background are all right.

This is the base number DDPO should improve on, reported for the combinations the model
was trained on (seen) and those left out (shared.shapes.HELD_OUT), by the classifier and by
the rule-based judge (shared/rule_judge.py). Run:
python tools/eval_prompt_fidelity.py --model models/tiny-sd --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from reward_server.scorers.prompt_fidelity import DEFAULT_DIR, HEADS, load  # noqa: E402
from shared import rule_judge, shapes  # noqa: E402


def sample(
    model: Path, prompts: list[str], seed: int, steps: int, guidance: float, batch: int
) -> list[Image.Image]:
    """DDIM (eta 0) samples, one per prompt, seeded per batch for reproducibility."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch):
        gen = torch.Generator().manual_seed(seed + i)
        out = pipe(
            prompts[i : i + batch],
            height=64,
            width=64,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gen,
        )
        images += out.images
    return images


@torch.no_grad()
def reconstruct(model: Path, prompts: list[str], seed: int) -> list[Image.Image]:
    """VAE round trips of fresh drawings: the ceiling the VAE puts on sample fidelity."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model / "vae", dtype=torch.float32)
    rng = np.random.default_rng(seed)
    arr = np.stack([shapes.draw(*shapes.parse_prompt(p), rng) for p in prompts])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    out = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/tiny-sd"))
    ap.add_argument("--classifier", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--seeds", type=int, default=3, help="samples per prompt")
    ap.add_argument("--seed", type=int, default=123_456, help="held out: training never uses it")
    ap.add_argument(
        "--extra-held-out",
        type=int,
        default=6,
        help="more samples per held-out prompt, so their fidelity is not a 6 x seeds mean",
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=36)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reconstructions", action="store_true", help="score VAE round trips instead")
    ap.add_argument("--grid", type=Path, default=None, help="write a PNG grid of the samples")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompts = shapes.all_prompts() * args.seeds + shapes.held_out_prompts() * args.extra_held_out
    start = time.time()
    if args.reconstructions:
        images = reconstruct(args.model, prompts, args.seed)
    else:
        images = sample(args.model, prompts, args.seed, args.steps, args.guidance, args.batch)
    elapsed = time.time() - start
    scorer = load(args.classifier)
    scores, details = scorer.score(images, prompts)
    assert details is not None
    wanted = [shapes.parse_prompt(p) for p in prompts]
    per_head = {
        h: float(np.mean([d["predicted"][h] == w[k] for d, w in zip(details, wanted, strict=True)]))
        for k, h in enumerate(HEADS)
    }
    match = np.array([d["match"] for d in details])
    by_rule = rule_judge.matches(np.stack([np.asarray(im) for im in images]), prompts)
    held = np.array([p in shapes.held_out_prompts() for p in prompts])
    result = {
        "source": "vae reconstructions" if args.reconstructions else "samples",
        "samples": len(prompts),
        "samples_held_out": int(held.sum()),
        "steps": args.steps,
        "guidance": args.guidance,
        "fidelity_all_three": float(match.mean()),
        "fidelity_seen": float(match[~held].mean()),
        "fidelity_held_out": float(match[held].mean()),
        "rule_judge_seen": float(by_rule[~held].mean()),
        "rule_judge_held_out": float(by_rule[held].mean()),
        "judges_agree": float((by_rule == match).mean()),
        "held_out_by_prompt": {
            h: float(np.mean([m for m, q in zip(match, prompts, strict=True) if q == h]))
            for h in shapes.held_out_prompts()
        },
        "mean_score": float(np.mean(scores)),
        "accuracy": per_head,
        "sampling_seconds": round(elapsed, 1),
    }
    print(json.dumps(result, indent=2))
    if args.grid is not None:
        cols = len(shapes.all_prompts())
        arr = np.stack([np.asarray(im) for im in images[: cols * args.seeds]])
        rows = [np.concatenate(list(arr[r * cols : (r + 1) * cols]), 1) for r in range(args.seeds)]
        Image.fromarray(np.concatenate(rows, 0)).save(args.grid)


if __name__ == "__main__":
    main()
