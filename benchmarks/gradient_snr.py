"""Is there a policy gradient to follow? Signal-to-noise of DDPO's gradient at a sample budget.

Samples G groups of k trajectories (one prompt per group, other seeds) from a model with a
fresh LoRA, scores them in-process with `prompt_fidelity`, takes group-relative
advantages, and computes one policy gradient per group (sum over the stored steps of
advantage x d log-prob / d LoRA weights). From the G per-group gradients:

- snr: |mean gradient| / |its standard error| (1 = indistinguishable from noise; the
  mean of G independent noise vectors has SNR ~1 whatever G is);
- cos_halves: cosine between the mean gradients of two disjoint halves of the groups
  (0 = noise, 1 = the same direction from both).

It also prints how far apart the text encoder puts the prompts' shape words (cosine of
whole-prompt embeddings differing in one word): a UNet update can only follow a prompt
distinction its conditioning carries.

    python benchmarks/gradient_snr.py --model models/tiny-sd --groups 24

Writes benchmarks/results/gradient_snr.json (one entry per run, appended).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import REPO, RESULTS_DIR, machine_info

WORD_PAIRS = (
    ("a red circle on a white background", "a red square on a white background"),
    ("a red circle on a white background", "a red triangle on a white background"),
    ("a red circle on a white background", "a blue circle on a white background"),
)


def word_cosines(family) -> dict[str, float]:
    """Cosine of the flattened prompt embeddings of prompts that differ in one word."""
    import torch

    out = {}
    for a, b in WORD_PAIRS:
        e = family.encode_prompts([a, b], 64)["prompt_embeds"].flatten(1)
        cos = torch.nn.functional.cosine_similarity(e[0], e[1], dim=0)
        ((wa, wb),) = [(w, v) for w, v in zip(a.split(), b.split(), strict=True) if w != v]
        out[f"{wa}/{wb}"] = round(float(cos), 4)
    return out


def measure(args: argparse.Namespace) -> dict[str, object]:
    import numpy as np
    import torch
    from PIL import Image

    from reward_server.scorers.prompt_fidelity import build as build_fidelity
    from shared.shapes import all_prompts
    from trainer.advantages import group_advantages
    from trainer.config import TrainConfig
    from trainer.families import load_family
    from trainer.lora import add_lora
    from trainer.ppo import recompute_log_prob
    from trainer.sampling import Trajectories, sample_trajectories

    torch.manual_seed(args.seed)
    family = load_family(str(args.model), None, torch.device("cpu"), torch.float32)
    cfg = TrainConfig(
        pretrained_model=str(args.model),
        prompts=["-"],
        lora_target_modules=args.targets,
        rewards=[{"url": "http://unused", "scorer": "prompt_fidelity"}],
    )
    unet = family.unet
    add_lora(unet, cfg)
    params = [p for p in unet.parameters() if p.requires_grad]
    scorer = build_fidelity(None)

    pool = [p for p in all_prompts() if not args.only or any(w in p for w in args.only)]
    rng = np.random.default_rng(args.seed)
    k, groups = args.group_size, args.groups
    prompts = [pool[i] for i in rng.choice(len(pool), groups, replace=groups > len(pool))]
    prompts = [p for p in prompts for _ in range(k)]
    seeds = [args.seed * 100_000 + i for i in range(len(prompts))]
    window = range(0, args.window)
    uncond = family.encode_unconditional(64)
    start = time.perf_counter()
    parts = []
    for i in range(0, len(prompts), 32):
        parts.append(
            sample_trajectories(
                family,
                unet,
                prompts[i : i + 32],
                torch.arange(len(prompts[i : i + 32])),
                seeds[i : i + 32],
                num_steps=args.steps,
                guidance_scale=args.guidance,
                eta=1.0,
                resolution=64,
                uncond=uncond,
                window=window,
            )
        )
    trajs = Trajectories.cat(parts)
    images = [Image.fromarray(a) for a in trajs.images]
    rewards = np.asarray(scorer.score(images, prompts)[0])
    group_of = np.repeat(np.arange(groups), k)
    advantages = torch.from_numpy(group_advantages(rewards, group_of, args.std))
    sampled_s = time.perf_counter() - start

    per_group = []
    for g in range(groups):
        rows = torch.arange(g * k, (g + 1) * k)
        batch = trajs.select(rows)
        loss = torch.zeros(())
        for step in range(len(window)):
            log_prob = recompute_log_prob(
                family, unet, batch, torch.full((k,), step), uncond, args.guidance, 1.0
            )
            loss = loss - (advantages[rows] * log_prob).sum()
        grads = torch.autograd.grad(loss, params)
        per_group.append(torch.cat([x.flatten() for x in grads]))
    stacked = torch.stack(per_group)
    mean = stacked.mean(0)
    stderr = stacked.std(0) / groups**0.5
    half = groups // 2
    cos = torch.nn.functional.cosine_similarity(
        stacked[:half].mean(0), stacked[half:].mean(0), dim=0
    )
    return {
        "model": str(args.model),
        "targets": args.targets,
        "window": args.window,
        "groups": groups,
        "group_size": k,
        "std": args.std,
        "only": args.only,
        "reward_mean": round(float(rewards.mean()), 4),
        "trainable_params": int(stacked.shape[1]),
        "snr": round(float(mean.norm() / stderr.norm()), 3),
        "cos_halves": round(float(cos), 3),
        "word_cosines": word_cosines(family),
        "seconds": {
            "sample": round(sampled_s, 1),
            "grad": round(time.perf_counter() - start - sampled_s, 1),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "tiny-sd")
    ap.add_argument("--groups", type=int, default=24, help="prompts (one gradient each)")
    ap.add_argument("--group-size", type=int, default=8, help="samples per prompt")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--window", type=int, default=3, help="first N steps stochastic")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--targets", nargs="+", default=["attn2.to_k", "attn2.to_v"])
    ap.add_argument("--std", choices=("group", "batch"), default="batch")
    ap.add_argument("--only", nargs="*", default=[], help="keep prompts naming these words")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    result = {**measure(args), "machine": machine_info()}
    print(json.dumps(result, indent=1))
    path = RESULTS_DIR / "gradient_snr.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps([*runs, result], indent=1) + "\n")


if __name__ == "__main__":
    main()
