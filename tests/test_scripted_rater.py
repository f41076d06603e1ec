"""The scripted rater judges by its taste (a colour, size, a dark background) like a person
would, and rates through the rater API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from reward_server.app import create_app
from reward_server.scorers.human import HumanScorer
from reward_server.scripted_rater import (
    EMPTY,
    LIKED,
    SMEARED,
    TASTES,
    ScriptedRater,
    main,
    preference_score,
    split_invite,
)
from reward_server.settings import ServerSettings
from reward_server.storage import NewItem, RatingStore
from shared.images import png_bytes
from shared.shapes import BACKGROUNDS, COLOURS, SHAPES, draw


@pytest.mark.parametrize("colour", COLOURS)
def test_likes_the_preferred_colour_best(colour: str) -> None:
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for background in BACKGROUNDS:
            scores = {
                other: preference_score(
                    Image.fromarray(draw(shape, other, background, rng)), colour
                )
                for other in COLOURS
            }
            assert scores[colour] >= LIKED - 1, (shape, background, scores)
            assert all(scores[colour] - s >= 4 for c, s in scores.items() if c != colour), (
                shape,
                background,
                scores,
            )


def shrunk(shape: str, colour: str, background: str, rng: np.random.Generator) -> np.ndarray:
    """The same kind of drawing at half the size, centred on a 64 px canvas of its background."""
    small = draw(shape, colour, background, rng, size=32)
    canvas = np.empty((64, 64, 3), dtype=np.uint8)
    canvas[:] = small[0, 0]  # the small drawing's own background tone
    canvas[16:48, 16:48] = small
    return canvas


@pytest.mark.parametrize("shape", SHAPES)
def test_big_likes_bigger_shapes_whatever_the_colour(shape: str) -> None:
    for seed, (colour, background) in enumerate(
        (c, b) for c in COLOURS for b in BACKGROUNDS
    ):  # the same drawing, full size and at half size
        big = draw(shape, colour, background, np.random.default_rng(seed))
        small = shrunk(shape, colour, background, np.random.default_rng(seed))
        scores = [preference_score(Image.fromarray(im), "big") for im in (big, small)]
        assert scores[0] > scores[1] and scores[1] <= 3, (colour, background, scores)
    # Colour plays no part: one drawing recoloured keeps its score within rounding.
    a = draw(shape, "red", "gray", np.random.default_rng(9))
    b = draw(shape, "blue", "gray", np.random.default_rng(9))
    assert (
        abs(
            preference_score(Image.fromarray(a), "big")
            - preference_score(Image.fromarray(b), "big")
        )
        <= 1
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_dark_likes_black_backgrounds_then_gray_then_white(shape: str) -> None:
    rng = np.random.default_rng(6)
    for colour in COLOURS:
        score = {
            b: preference_score(Image.fromarray(draw(shape, colour, b, rng)), "dark")
            for b in BACKGROUNDS
        }
        assert score["black"] >= LIKED - 1, (colour, score)
        assert score["black"] - score["gray"] >= 3 and score["gray"] - score["white"] >= 3, (
            colour,
            score,
        )


@pytest.mark.parametrize("taste", TASTES)
def test_every_taste_rates_a_blank_picture_and_a_smear_low(taste: str) -> None:
    blank = np.full((64, 64, 3), 15, dtype=np.uint8)  # black: what "dark" likes, but no shape
    assert preference_score(Image.fromarray(blank), taste) == EMPTY
    messy = draw("circle", "red", "black", np.random.default_rng(2)).copy()
    messy[:12, :12] = (245, 245, 245)  # one corner unlike the others: not a plain background
    assert preference_score(Image.fromarray(messy), taste) <= SMEARED


def test_an_unknown_taste_is_refused_with_the_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="big, dark"):
        preference_score(
            Image.fromarray(draw("circle", "red", "gray", np.random.default_rng(0))), "huge"
        )
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command()(main)
    runner = CliRunner(env={"COLUMNS": "300"})  # one line: no box wrapping the message
    result = runner.invoke(app, ["http://h/rate/login?token=t", "--prefers", "purple"])
    assert result.exit_code == 2 and "red, green, blue, yellow, big, dark" in result.output


def test_scores_grade_with_hue_like_a_person() -> None:
    """A red lover: orange between red and yellow, yellow above green and blue."""
    rng = np.random.default_rng(3)
    red = draw("square", "red", "gray", rng)
    orange = red.copy()
    orange[(red[..., 0] > 150) & (red[..., 1] < 100)] = (235, 125, 30)
    score = {
        "red": preference_score(Image.fromarray(red), "red"),
        "orange": preference_score(Image.fromarray(orange), "red"),
        **{
            c: preference_score(Image.fromarray(draw("square", c, "gray", rng)), "red")
            for c in ("yellow", "green", "blue")
        },
    }
    assert score["red"] > score["orange"] > score["yellow"] > score["green"], score
    assert score["yellow"] > score["blue"], score


def test_an_empty_picture_scores_lowest() -> None:
    blank = np.full((64, 64, 3), 128, dtype=np.uint8)
    assert preference_score(Image.fromarray(blank), "red") == EMPTY


def test_a_smear_of_the_colour_earns_less_than_a_clean_shape() -> None:
    clean = draw("circle", "red", "white", np.random.default_rng(0))
    smear = clean.copy()
    smear[-16:, -16:] = (220, 30, 30)  # a red blob in one corner, as a reward hack would paint
    assert preference_score(Image.fromarray(clean), "red") == LIKED
    assert preference_score(Image.fromarray(smear), "red") == SMEARED


def test_split_invite() -> None:
    assert split_invite("http://h:8/rate/login?token=abc-_1") == ("http://h:8", "abc-_1")
    assert split_invite("https://x/sub/rate/login?token=t") == ("https://x/sub", "t")
    with pytest.raises(ValueError, match="invite link"):
        split_invite("http://h:8/rate?token=abc")
    with pytest.raises(ValueError, match="invite link"):
        split_invite("http://h:8/rate/login")
    with pytest.raises(ValueError, match="prefers"):
        ScriptedRater("http://h/rate/login?token=t", prefers="purple")


def test_rates_queued_images_through_the_api(tmp_path: Path) -> None:
    store = RatingStore(f"sqlite:///{tmp_path / 'r.db'}")
    app = create_app(
        ServerSettings(), {"human": HumanScorer(store, "score", 1)}, rating_store=store
    )
    rng = np.random.default_rng(1)
    colours = ["red", "blue", "red", "yellow"]
    drawings = [draw("circle", c, "white", rng) for c in colours]
    items = [NewItem(str(i), "a circle", png_bytes(d), {}) for i, d in enumerate(drawings)]
    job_id, _ = store.create_job("human", "score", 1, items, deadline_s=600)
    _, token = store.add_rater("bot")
    with TestClient(app) as client:
        rater = ScriptedRater(f"http://testserver/rate/login?token={token}", "red")
        rater.http = client  # same API, served in-process
        client.headers["Authorization"] = f"Bearer {token}"
        while rater.rate_one():
            pass
    view = store.job_view(job_id)
    assert view is not None and view.status == "done"
    # Each stored score is the rater's judgement of the image it was shown.
    assert view.scores == [float(preference_score(Image.fromarray(d), "red")) for d in drawings]
    assert min(view.scores[0], view.scores[2]) > max(view.scores[1], view.scores[3])
    assert (rater.rated, rater.liked) == (4, 2)
    store.close()
