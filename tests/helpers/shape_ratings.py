"""Scripted ratings of procedural shapes, stored through RatingStore's real API."""

from __future__ import annotations

from typing import Any, Literal


def rate_shapes(
    store: Any,
    n: int,
    prefers: str = "red",
    mode: Literal["score", "pair"] = "score",
    seed: int = 0,
    noise: float = 1.0,
    flip: float = 0.1,
    size: int = 64,
) -> None:
    """Queue `n` procedural shape drawings (pair mode: `n` A/B pairs) and rate them all
    through the store's real API, as raters who like one colour would.

    Score mode: each image gets one 1-10 rating, about 8 for the preferred colour
    and 3 for the others, plus Gaussian noise of `noise` points. Pair mode: each
    pair shows a preferred-colour drawing against another colour under a shared
    prompt; the raters pick the preferred one, except a `flip` share of the time.
    """
    import numpy as np

    from reward_server.storage import NewItem
    from shared.images import png_bytes
    from shared.shapes import BACKGROUNDS, COLOURS, SHAPES, draw, prompt_for

    rng = np.random.default_rng(seed)
    others = [c for c in COLOURS if c != prefers]

    def drawing(colour: str) -> tuple[bytes, str]:
        shape, background = str(rng.choice(SHAPES)), str(rng.choice(BACKGROUNDS))
        return png_bytes(draw(shape, colour, background, rng, size)), prompt_for(
            shape, colour, background
        )

    items = []
    colour_of: dict[bytes, str] = {}
    for i in range(n):
        if mode == "score":
            colour = prefers if rng.random() < 0.4 else str(rng.choice(others))
            png, prompt = drawing(colour)
            colour_of[png] = colour
            items.append(NewItem(f"s{i}", prompt, png, {"colour": colour}))
        else:
            for colour in (prefers, str(rng.choice(others))):
                png, _ = drawing(colour)
                colour_of[png] = colour
                items.append(NewItem(f"p{i}-{colour}", f"pair {i}", png, {"colour": colour}))
    store.create_job("human" if mode == "score" else "human_pairwise", mode, 1, items, 3600)
    raters = [store.add_rater(f"{prefers}-fan-{seed}-{k}")[0] for k in range(2)]
    for k in range(n):
        rater = raters[k % 2]
        task = store.claim(rater, 60, mode)
        assert task is not None, "the queue ran dry before every item was rated"
        colours = [colour_of[store.image_for(rater, it.item_id)] for it in task.items]
        if mode == "score":
            base = 8.0 if colours[0] == prefers else 3.0
            score = int(np.clip(round(base + rng.normal(0.0, noise)), 1, 10))
            store.submit(rater, task.lease_token, score=score)
        else:
            pick = 0 if colours[0] == prefers else 1
            if rng.random() < flip:
                pick = 1 - pick
            store.submit(rater, task.lease_token, choice="ab"[pick])
