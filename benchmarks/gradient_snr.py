"""Is there a policy gradient to follow? Signal-to-noise of DDPO's gradient at a sample budget.

Samples G groups of k trajectories (one prompt per group, other seeds) from a model with a
fresh LoRA, scores them in-process with `prompt_fidelity`, takes group-relative
advantages, and computes one policy gradient per group (sum over the stored steps of
advantage x d log-prob / d LoRA weights). From the G per-group gradients:

- snr: |mean gradient| / |its standard error| (1 = indistinguishable from noise; the
  mean of G independent noise vectors has SNR ~1 whatever G is);
- cos_halves: cosine between the mean gradients of two disjoint halves of the groups
  (0 = noise, 1 = the same direction from both).

With `--step-baseline` the same samples are also scored as `train_step_baseline`
trains them: each stored step gets the advantage r - V(x_t), V the reward of the
image its x0 prediction decodes to (trainer/step_baseline.py); both estimators'
figures are reported side by side.

It also prints how far apart the text encoder puts the prompts' shape words (cosine of
whole-prompt embeddings differing in one word): a UNet update can only follow a prompt
distinction its conditioning carries.

    python benchmarks/gradient_snr.py --model models/tiny-sd --groups 24 [--step-baseline]

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
    from trainer.step_baseline import step_advantages

    torch.manual_seed(args.seed)
    family = load_family(str(args.model), None, torch.device("cpu"), torch.float32)
    cfg = TrainConfig(
        pretrained_model=str(args.model),
        train_algorithm="ppo",
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
                predict_x0_images=args.step_baseline,
            )
        )
    trajs = Trajectories.cat(parts)

    def score(images: np.ndarray, names: list[str]) -> np.ndarray:
        return np.asarray(scorer.score([Image.fromarray(a) for a in images], names)[0])

    rewards = score(trajs.images, prompts)
    group_of = np.repeat(np.arange(groups), k)
    steps = len(window)
    plain = group_advantages(rewards, group_of, args.std)
    estimators = {"final_reward": np.repeat(plain[:, None], steps, axis=1)}
    if args.step_baseline:
        x0 = trajs.x0_images
        values = score(x0.reshape(-1, *x0.shape[2:]), [p for p in prompts for _ in range(steps)])
        cfg_b = cfg.model_copy(update={"sample_group_size": k, "group_advantage_std": args.std})
        values = values.reshape(len(prompts), steps)
        estimators["step_baseline"] = step_advantages(cfg_b, rewards, values, group_of)
    sampled_s = time.perf_counter() - start

    per_group: dict[str, list] = {name: [] for name in estimators}
    for g in range(groups):
        rows = torch.arange(g * k, (g + 1) * k)
        batch = trajs.select(rows)
        log_probs = [
            recompute_log_prob(family, unet, batch, torch.full((k,), s), uncond, args.guidance, 1.0)
            for s in range(steps)
        ]
        for name, adv in estimators.items():
            a = torch.from_numpy(adv[g * k : (g + 1) * k]).float()
            loss = -sum((a[:, s] * log_probs[s]).sum() for s in range(steps))
            grads = torch.autograd.grad(loss, params, retain_graph=True)
            per_group[name].append(torch.cat([x.flatten() for x in grads]))
    figures = {}
    for name, rows_ in per_group.items():
        stacked = torch.stack(rows_)
        mean = stacked.mean(0)
        stderr = stacked.std(0) / groups**0.5
        half = groups // 2
        cos = torch.nn.functional.cosine_similarity(
            stacked[:half].mean(0), stacked[half:].mean(0), dim=0
        )
        figures[name] = {
            "snr": round(float(mean.norm() / stderr.norm()), 3),
            "cos_halves": round(float(cos), 3),
        }
    return {
        "model": str(args.model),
        "targets": args.targets,
        "window": args.window,
        "groups": groups,
        "group_size": k,
        "std": args.std,
        "only": args.only,
        "reward_mean": round(float(rewards.mean()), 4),
        "trainable_params": int(sum(p.numel() for p in params)),
        # the final-reward estimator's figures at the top level, as in earlier entries
        **figures["final_reward"],
        "estimators": figures,
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
    ap.add_argument(
        "--step-baseline",
        action="store_true",
        help="also measure train_step_baseline's per-step advantages on the same samples",
    )
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
