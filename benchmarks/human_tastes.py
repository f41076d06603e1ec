"""Does `ddpo demo --reward human` follow the rater, whoever rates? (issue 13, item 6)

For each taste (a colour, "big" shapes or a "dark" background; see
reward_server/scripted_rater.py) the human demo runs in-process with a scripted
rater of that taste signed in on the invite link it prints. Then, on held-out
images (the demo's shape-only prompts x seeds no run trains on, sampled like
ddpo.demo.eval_images), before and after:

- rating: the taste's mean score of the held-out images (what that rater would give);
- shape: prompt_fidelity's shape-head probability of the prompt's shape, and the share
  whose predicted shape is the prompt's (the taste must not cost the shape);
- diversity: mean absolute pixel difference (0-1) between the images of one seed under
  prompts of different shapes (0: one image serves every prompt), and how many distinct
  predicted (shape, colour, background) triples the set has;
- per epoch: approx_kl, clipfrac, kl_to_reference and the epoch's mean rating.

The recipe is the demo's config plus --set overrides (the same key=value as
`ddpo demo --set`). Each taste's figures are kept in RUNS/<taste>/taste_result.json;
--reuse takes them from there when the recipe and epochs match (run tastes in
parallel processes, then assemble the table with one --reuse call).

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/human_tastes.py \\
        --set use_lora=true --set train_learning_rate=3e-3 ...
    python benchmarks/human_tastes.py --report benchmarks/results/human_tastes.json

Writes benchmarks/results/<--out>.json (default human_tastes).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import OUR_PACKAGES, REPO, machine_info, versions, write_result
from PIL import Image

#: Tastes measured by default, and the ones the demo's recipe was chosen on (the DiffusionNFT
#: recipe of 2026-12-05 on blue; the PPO recipe before it on red and big).
DEFAULT_TASTES = ("red", "blue", "green", "yellow", "big", "dark")
TUNED_ON = ("blue", "yellow")  # the recipe on blue; its prompt weight 1 first on yellow
HELD_OUT_SEEDS = list(range(5000, 5012))
INVITE = re.compile(r"(http://\S+/rate/login\?token=[\w\-]+)")


class RaterConsole:
    """Stands in for the demo's console: prints, and starts a scripted rater of one taste
    on the first invite link it sees, as a person would open it."""

    def __init__(self, taste: str) -> None:
        self.taste = taste
        self.rater = None

    def print(self, message: str, soft_wrap: bool = False) -> None:
        from reward_server.scripted_rater import ScriptedRater

        print(message, flush=True)
        match = INVITE.search(message)
        if match and self.rater is None:
            self.rater = ScriptedRater(match.group(1), self.taste).start()

    def stop(self) -> int:
        if self.rater is None:
            return 0
        self.rater.stop()
        return self.rater.rated


def held_out() -> tuple[list[str], list[int]]:
    from ddpo.demo import HUMAN_PROMPTS

    return [p for p in HUMAN_PROMPTS for _ in HELD_OUT_SEEDS], [
        s for _ in HUMAN_PROMPTS for s in HELD_OUT_SEEDS
    ]


def judge(images: np.ndarray, prompts: list[str], seeds: list[int], taste: str) -> dict[str, Any]:
    """The held-out figures of one image set (see the module docstring)."""
    from reward_server.scorers.prompt_fidelity import build
    from reward_server.scripted_rater import preference_score
    from shared import rule_judge

    pil = [Image.fromarray(a) for a in images]
    fidelity = build(None)
    probs = fidelity.predict(pil)
    shapes, colours, backgrounds = fidelity.labels
    wanted = [shapes.index(p.split()[-1]) for p in prompts]
    shape_p = probs[0][np.arange(len(pil)), wanted].numpy()
    predicted = [tuple(int(h[i].argmax()) for h in probs) for i in range(len(pil))]
    by_rule = [(rule_judge.judge(a)[0], w) for a, w in zip(images, wanted, strict=True)]
    pixels = images.astype(np.float32) / 255.0
    cross = [
        float(np.abs(pixels[i] - pixels[j]).mean())
        for i in range(len(pil))
        for j in range(i + 1, len(pil))
        if seeds[i] == seeds[j] and wanted[i] != wanted[j]
    ]
    return {
        "rating": float(np.mean([preference_score(im, taste) for im in pil])),
        "shape_probability": float(shape_p.mean()),
        "shape_accuracy": float(
            np.mean([p[0] == w for p, w in zip(predicted, wanted, strict=True)])
        ),
        "shape_accuracy_rule": float(np.mean([got == shapes[w] for got, w in by_rule])),
        "cross_prompt_pixel_distance": float(np.mean(cross)),
        "distinct_predicted_triples": len(set(predicted)),
        "predicted_colours": {c: sum(p[1] == k for p in predicted) for k, c in enumerate(colours)},
        "predicted_backgrounds": {
            b: sum(p[2] == k for p in predicted) for k, b in enumerate(backgrounds)
        },
    }


def per_epoch(records: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    keys = ("reward_mean", "approx_kl", "clipfrac", "kl_to_reference", "log_ratio_abs_max")
    return {k: [r.get(k) for r in records] for k in keys}


@dataclass(frozen=True)
class Setup:
    """What one table's runs share: the demo's recipe plus these, on one model."""

    recipe: list[str]
    epochs: int
    prompt_weight: float
    model: Path


def run_taste(
    taste: str, setup: Setup, runs: Path, before: np.ndarray, reuse: bool
) -> dict[str, Any]:
    from ddpo.demo import eval_images, run_demo
    from trainer.run_log import read_metrics

    out = runs / taste
    cached = out / "taste_result.json"
    if reuse and cached.is_file():
        result = json.loads(cached.read_text())
        old = Setup(
            result["recipe"],
            result["epochs"],
            result.get("prompt_weight", 0.0),
            Path(result.get("model", setup.model)),
        )
        if old == setup:
            print(f"{taste}: reusing {cached}", flush=True)
            return result
    prompts, seeds = held_out()
    console = RaterConsole(taste)
    started = time.monotonic()
    try:
        run_demo(
            "human",
            setup.epochs,
            out,
            model=setup.model,
            console=console,
            overrides=setup.recipe,
            rating_deadline_s=300,
            prompt_weight=setup.prompt_weight,
        )
    finally:
        rated = console.stop()
    wall = time.monotonic() - started
    after = eval_images(setup.model, out, prompts, seeds)
    Image.fromarray(
        np.concatenate([np.concatenate(list(before), 1), np.concatenate(list(after), 1)])
    ).save(out / "held_out_before_after.png")
    result = {
        "taste": taste,
        "tuned_on": taste in TUNED_ON,
        "recipe": setup.recipe,
        "epochs": setup.epochs,
        "prompt_weight": setup.prompt_weight,
        "model": str(setup.model),
        "wall_s": round(wall, 1),
        "rated": rated,
        "before": judge(before, prompts, seeds, taste),
        "after": judge(after, prompts, seeds, taste),
        "per_epoch": per_epoch(read_metrics(out)),
    }
    cached.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| taste | tuned on | prompt weight | rating | shape prob. | shape acc. "
        "| shape acc. (rule) | cross-prompt distance "
        "| distinct triples | approx_kl per epoch (max) | kl_to_reference (last) | wall s |"
    )
    rows = [head, "|" + "---|" * 12]
    for r in results:
        b, a, e = r["before"], r["after"], r["per_epoch"]
        kl = [x for x in e["approx_kl"] if x is not None]
        ref = [x for x in e["kl_to_reference"] if x is not None]
        rows.append(
            f"| {r['taste']} | {'yes' if r['tuned_on'] else 'no'} "
            f"| {_fmt(r.get('prompt_weight'), '.2g')} "
            f"| {b['rating']:.2f} -> {a['rating']:.2f} "
            f"| {b['shape_probability']:.2f} -> {a['shape_probability']:.2f} "
            f"| {b['shape_accuracy']:.2f} -> {a['shape_accuracy']:.2f} "
            f"| {_fmt(b.get('shape_accuracy_rule'), '.2f')} -> "
            f"{_fmt(a.get('shape_accuracy_rule'), '.2f')} "
            f"| {b['cross_prompt_pixel_distance']:.3f} -> {a['cross_prompt_pixel_distance']:.3f} "
            f"| {b['distinct_predicted_triples']} -> {a['distinct_predicted_triples']} "
            f"| {_fmt(max(kl) if kl else None)} "
            f"| {_fmt(ref[-1] if ref else None)} | {r['wall_s']:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tastes", default=",".join(DEFAULT_TASTES), help="comma-separated")
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    ap.add_argument(
        "--prompt-weight", type=float, default=None, help="default: the demo's HUMAN_PROMPT_WEIGHT"
    )
    ap.add_argument("--model", default=None, help="a pipeline directory; default: the demo's")
    ap.add_argument("--set", dest="recipe", action="append", default=[], help="key=value")
    ap.add_argument("--runs", type=Path, default=REPO / "outputs" / "human_tastes")
    ap.add_argument("--out", default="human_tastes", help="results file name, no .json")
    ap.add_argument("--reuse", action="store_true", help="take finished tastes from --runs")
    ap.add_argument("--report", type=Path, help="print the table of a results file and exit")
    args = ap.parse_args()
    if args.report:
        print(table(json.loads(args.report.read_text())["tastes"]))
        return

    from ddpo.demo import HUMAN, HUMAN_PROMPT_WEIGHT, default_epochs, eval_images, resolve_model
    from reward_server.scripted_rater import check_taste

    weight = HUMAN_PROMPT_WEIGHT if args.prompt_weight is None else args.prompt_weight
    epochs = args.epochs or default_epochs(HUMAN)
    setup = Setup(args.recipe, epochs, weight, resolve_model(args.model))

    tastes = [check_taste(t.strip()) for t in args.tastes.split(",") if t.strip()]
    prompts, seeds = held_out()
    before = eval_images(setup.model, None, prompts, seeds)
    results = [run_taste(t, setup, args.runs / args.out, before, args.reuse) for t in tastes]
    path = write_result(
        args.out,
        {
            "benchmark": "human_tastes",
            "command": "ddpo demo --reward human --epochs N --set ... (in-process run_demo)",
            "recipe": args.recipe,
            "epochs": epochs,
            "prompt_weight": weight,
            "model": str(setup.model),
            "tuned_on": list(TUNED_ON),
            "held_out": {"prompts": sorted(set(prompts)), "seeds": HELD_OUT_SEEDS},
            "machine": machine_info(),
            "versions": versions(OUR_PACKAGES),
            "tastes": results,
        },
    )
    print(table(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
