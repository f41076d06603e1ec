"""The prompt-fidelity demo's prompts and its two judges, seen and held-out combinations apart.

The built-in model never saw the shape-and-colour pairs of `shared.shapes.HELD_OUT_PAIRS`
together in training and draws them partly wrong, as SD draws unusual compositions (DDPO's
prompt-alignment experiment).
The demo trains on those prompts beside seen neighbours and reports fidelity on each group
separately, by the reward's classifier and by a rule-based judge that learns nothing.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydantic import BaseModel

from shared import rule_judge, shapes

#: Seeds of the scored grid; training draws its seeds from (seed, epoch, rank, batch, item),
#: never these. The held-out prompts get more, so their mean is not one of 12 images.
SEEN_EVAL_SEEDS = [101, 202]
HELD_OUT_EVAL_SEEDS = [101, 202, 303, 404, 505, 606]


def train_prompts() -> list[str]:
    """Each held-out prompt, then its seen neighbour (same colour and background, next shape).

    The neighbours keep the seen drawings in the batch, so a change that breaks them costs
    reward, and they contrast with the held-out prompt in the shape word only: "a blue
    circle" against "a blue square" is the binding the base model never learnt.
    """
    held = shapes.held_out_prompts()
    neighbours = []
    for shape, colour, background in shapes.HELD_OUT:
        i = shapes.SHAPES.index(shape)
        for step in range(1, len(shapes.SHAPES)):
            other = (shapes.SHAPES[(i + step) % len(shapes.SHAPES)], colour, background)
            if other not in shapes.HELD_OUT:
                neighbours.append(shapes.prompt_for(*other))
                break
    return held + neighbours


def eval_grid() -> tuple[list[str], list[int]]:
    """(prompts, seeds) of the scored grid: every prompt, held-out ones on more seeds."""
    held = set(shapes.held_out_prompts())
    prompts, seeds = [], []
    for prompt in shapes.all_prompts():
        for seed in HELD_OUT_EVAL_SEEDS if prompt in held else SEEN_EVAL_SEEDS:
            prompts.append(prompt)
            seeds.append(seed)
    return prompts, seeds


class FidelityReport(BaseModel):
    """Share of images with shape, colour and background all right, by judge and group."""

    classifier_seen: float
    classifier_held_out: float
    rule_seen: float
    rule_held_out: float
    #: Share of images on which the two judges reach the same verdict (right or wrong).
    judges_agree: float
    images_seen: int
    images_held_out: int


def classifier_matches(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """The `prompt_fidelity` classifier's verdict per image (all three argmaxes right)."""
    from reward_server.scorers.prompt_fidelity import build

    _, details = build(None).score([Image.fromarray(a) for a in images], prompts)
    assert details is not None
    return np.array([bool(d.get("match", False)) for d in details])


def fidelity_report(images: np.ndarray, prompts: list[str]) -> FidelityReport:
    """Both judges on uint8 HWC images, seen and held-out combinations apart."""
    by_classifier = classifier_matches(images, prompts)
    by_rule = rule_judge.matches(images, prompts)
    held = np.array([shapes.parse_prompt(p) in shapes.HELD_OUT for p in prompts])
    return FidelityReport(
        classifier_seen=float(by_classifier[~held].mean()),
        classifier_held_out=float(by_classifier[held].mean()),
        rule_seen=float(by_rule[~held].mean()),
        rule_held_out=float(by_rule[held].mean()),
        judges_agree=float((by_classifier == by_rule).mean()),
        images_seen=int((~held).sum()),
        images_held_out=int(held.sum()),
    )
