"""The committed prompt-fidelity classifier and its scorer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reward_server.scorers.base import ScorerUnavailable
from reward_server.scorers.prompt_fidelity import (
    DEFAULT_DIR,
    HEADS,
    PromptFidelityScorer,
    build,
    load,
)
from shared import shapes


@pytest.fixture(scope="module")
def scorer() -> PromptFidelityScorer:
    torch.set_num_threads(2)
    built = build()
    assert isinstance(built, PromptFidelityScorer)
    return built


def test_accuracy_on_fresh_images(scorer: PromptFidelityScorer) -> None:
    rng = np.random.default_rng(987_654)  # seeds the trainer never drew
    triples = shapes.all_triples() * 6
    images = [Image.fromarray(shapes.draw(*t, rng)) for t in triples]
    probs = scorer.predict(images)
    for k, head in enumerate(HEADS):
        labels = scorer.labels[k]
        truth = torch.tensor([labels.index(t[k]) for t in triples])
        acc = float((probs[k].argmax(-1) == truth).float().mean())
        assert acc >= 0.95, f"{head} accuracy {acc:.3f}"


def test_matching_prompt_scores_higher(scorer: PromptFidelityScorer) -> None:
    rng = np.random.default_rng(5)
    img = Image.fromarray(shapes.draw("triangle", "green", "black", rng))
    scores, details = scorer.score(
        [img, img, img],
        [
            "a green triangle on a black background",
            "a red triangle on a black background",
            "a green circle on a white background",
        ],
    )
    assert scores[0] > 0.5
    assert scores[0] > scores[1] and scores[0] > scores[2]
    assert details is not None and details[0]["match"] is True
    assert details[0]["predicted"] == {
        "shape": "triangle",
        "colour": "green",
        "background": "black",
    }


def test_shape_only_prompt_is_judged_on_what_it_names(scorer: PromptFidelityScorer) -> None:
    """A circle prompt leaves colour and background open: only the shape head counts."""
    rng = np.random.default_rng(8)
    circle = Image.fromarray(shapes.draw("circle", "green", "white", rng))
    square = Image.fromarray(shapes.draw("square", "green", "white", rng))
    scores, details = scorer.score(
        [circle, square, circle, circle],
        ["a circle", "circle", "a green circle", "a circle on a black background"],
    )
    probs = scorer.predict([circle, square])
    circle_p = float(probs[0][0, scorer.labels[0].index("circle")])
    assert scores[0] == pytest.approx(circle_p) and scores[0] > 0.5
    assert scores[1] < 0.5  # a square is not a circle, whatever its colour
    green_p = float(probs[1][0, scorer.labels[1].index("green")])
    assert scores[2] == pytest.approx(circle_p * green_p)
    assert scores[3] < 0.5  # the background it names is wrong
    assert details is not None
    assert [d["match"] for d in details] == [True, False, True, False]
    assert set(details[0]["probabilities"]) == {"shape"}


def test_named_attributes_parse() -> None:
    assert shapes.parse_named("circle") == ("circle", None, None)
    assert shapes.parse_named("A red square.") == ("square", "red", None)
    assert shapes.parse_named("a triangle on a gray background") == ("triangle", None, "gray")
    for triple in shapes.all_triples():
        assert shapes.parse_named(shapes.prompt_for(*triple)) == triple
    for nonsense in ("a dog", "a big circle", "red", "a circle on a red sky"):
        assert shapes.parse_named(nonsense) is None


def test_unparseable_prompt_scores_zero(scorer: PromptFidelityScorer) -> None:
    img = Image.fromarray(shapes.draw("circle", "red", "white", np.random.default_rng(1)))
    scores, details = scorer.score([img, img], ["a photo of a cat", "a red circle on a red sky"])
    assert scores == [0.0, 0.0]
    assert details is not None and all("not understood" in d["error"] for d in details)


def test_missing_weights_raise_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ScorerUnavailable):
        load(tmp_path)


def test_models_dir_setting_finds_weights(tmp_path: Path) -> None:
    target = tmp_path / "prompt-fidelity"
    shutil.copytree(DEFAULT_DIR, target)

    class Settings:
        models_dir = tmp_path

    built = build(Settings())
    assert isinstance(built, PromptFidelityScorer)


def test_prompt_round_trip() -> None:
    for triple in shapes.all_triples():
        assert shapes.parse_prompt(shapes.prompt_for(*triple)) == triple
    assert shapes.parse_prompt("a dog") is None


def test_draw_dataset_is_every_triple_in_order_and_reproducible():
    imgs, labels = shapes.draw_dataset(2, seed=3)
    n = len(shapes.all_triples())
    assert imgs.shape == (2 * n, 64, 64, 3) and imgs.dtype == np.uint8
    assert labels == list(range(n)) * 2
    again, _ = shapes.draw_dataset(2, seed=3)
    assert np.array_equal(imgs, again)
    assert not np.array_equal(imgs, shapes.draw_dataset(2, seed=4)[0])
