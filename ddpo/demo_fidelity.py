"""The prompt-fidelity demo's prompts and its two judges, seen and held-out combinations apart.

The built-in model never saw the shape-and-colour pairs of `shared.shapes.HELD_OUT_PAIRS`
together in training and draws them partly wrong, as SD draws unusual compositions (DDPO's
prompt-alignment experiment).
The demo trains on those prompts beside seen neighbours and reports fidelity on each group
separately, by the reward's classifier and by a rule-based judge that learns nothing.
"""

from __future__ import annotations

from pathlib import Path

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


class UserJudgement(BaseModel):
    """Both judges on the grid sampled as a user would (ddpo.user_pipeline), base and trained."""

    #: How the images were sampled, for the report (pipeline, scheduler, steps, guidance).
    sampling: str
    #: None for a flow model, which samples without classifier-free guidance.
    guidance_scale: float | None
    before: FidelityReport
    after: FidelityReport


def user_guidances(run_guidance: float) -> list[float]:
    """The guidance the run sampled at (the model card's, for the built-in models) and
    diffusers' default, which a user who never read the card gets: the gain is tied to the
    first and must be reported at the second too (docs/tiny-model.md)."""
    from ddpo.user_pipeline import USER_GUIDANCE_SCALE

    return sorted({float(run_guidance), USER_GUIDANCE_SCALE})


def judge_as_user(
    model: Path,
    trained: Path,
    prompts: list[str],
    seeds: list[int],
    run_guidance: float,
    flow: bool,
) -> list[UserJudgement]:
    """Base and trained weights through the plain diffusers pipeline, at each user guidance
    (once for a flow model)."""
    from ddpo.user_pipeline import UserSampling, user_images

    out = []
    for scale in [None] if flow else user_guidances(run_guidance):
        sampling = UserSampling() if scale is None else UserSampling(guidance_scale=scale)
        before, after = (
            fidelity_report(user_images(model, t, prompts, seeds, sampling), prompts)
            for t in (None, trained)
        )
        out.append(
            UserJudgement(
                sampling=sampling.describe(flow), guidance_scale=scale, before=before, after=after
            )
        )
    return out


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
