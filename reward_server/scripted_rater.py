"""A scripted rater: rates over the rater API like a person of one taste.

A taste is a colour (red, green, blue, yellow: the shape's hue), "big" (large
shapes) or "dark" (a black background), so a test or benchmark can check that
the human-feedback loop follows whoever rates, not one built-in preference.

It signs in with an invite link from `ddpo raters add` and uses the same API a
script would (`/rate/api/next`, `/rate/image/{id}`, `/rate/api/rate`), so it
exercises the whole human-rating path: the demo's full-loop test uses it, and
it lets you try `ddpo demo --reward human` without rating by hand:

    python -m reward_server.scripted_rater "INVITE_LINK" --prefers red
"""

from __future__ import annotations

import colorsys
import io
import logging
import threading
import time
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import typer
from PIL import Image

from shared.shapes import COLOURS, RGB

log = logging.getLogger(__name__)

#: A pixel belongs to the shape when it differs from the background by this much (0-255).
FOREGROUND_DISTANCE = 60
#: The shape must cover this share of the image; below it the picture is "empty".
MIN_COVERAGE = 0.03
#: Corner patches (background) may differ by this much per channel on a plain background.
PLAIN_TOLERANCE = 40
#: Best score, the score of a picture with no recognisable shape, and the cap for smears.
LIKED, EMPTY, SMEARED = 9, 1, 4
#: How fast liking falls with hue distance: higher is pickier about near misses (orange).
HUE_SHARPNESS = 1.5
#: "big": the shape's extent (share of the side) that scores EMPTY + 1 and the one that
#: scores LIKED; the procedural shapes span 0.27-0.6 (3-7 points), so the top is above them.
SMALL_EXTENT, BIG_EXTENT = 0.15, 0.75
#: "dark": background brightness (0-255) that scores LIKED (black) and EMPTY + 0 (white).
DARK_LEVEL, LIGHT_LEVEL = 15.0, 245.0
#: Tastes that are not a colour.
OTHER_TASTES: tuple[str, ...] = ("big", "dark")
TASTES: tuple[str, ...] = (*COLOURS, *OTHER_TASTES)


def _corners(pixels: np.ndarray) -> np.ndarray:
    c = max(1, min(pixels.shape[:2]) // 8)
    return np.stack(
        [
            pixels[:c, :c].mean((0, 1)),
            pixels[:c, -c:].mean((0, 1)),
            pixels[-c:, :c].mean((0, 1)),
            pixels[-c:, -c:].mean((0, 1)),
        ]
    )


def plain_background(image: Image.Image) -> bool:
    """All four corners (1/8 of the side) share one colour: a shape on a background,
    not a smear. A person who likes red would not like a red corner blob."""
    corners = _corners(np.asarray(image.convert("RGB"), dtype=np.float32))
    return bool((corners.max(0) - corners.min(0)).max() <= PLAIN_TOLERANCE)


def _split(image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels, background RGB, foreground mask): the shape is what differs from the corners."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = np.median(_corners(pixels), axis=0)
    return pixels, background, np.abs(pixels - background).max(-1) > FOREGROUND_DISTANCE


def shape_extent(image: Image.Image) -> float | None:
    """How far the shape reaches, as a share of the side: the mean of its width and height
    between the 2nd and 98th percentile of its pixels (stray specks do not count); None
    without a shape. Extent, not area, so a triangle is as big as a circle of its span."""
    _, _, foreground = _split(image)
    if foreground.mean() < MIN_COVERAGE:
        return None
    rows, cols = np.nonzero(foreground)
    spans = [np.percentile(v, 98) - np.percentile(v, 2) + 1 for v in (rows, cols)]
    return float(np.mean(spans) / max(foreground.shape))


def _graded(closeness: float) -> int:
    """0..1 liking -> EMPTY..LIKED."""
    return round(EMPTY + (LIKED - EMPTY) * float(np.clip(closeness, 0.0, 1.0)))


def hue_distance(rgb: np.ndarray, colour: str) -> float:
    """Distance between two hues on the colour wheel, 0 (same) to 0.5 (opposite)."""
    hue = colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255.0))[0]
    target = colorsys.rgb_to_hsv(*(np.asarray(RGB[colour]) / 255.0))[0]
    d = abs(hue - target) % 1.0
    return min(d, 1.0 - d)


def check_taste(taste: str) -> str:
    """The taste, or a ValueError naming the ones there are."""
    if taste not in TASTES:
        raise ValueError(f"prefers must be one of {', '.join(TASTES)}, not {taste!r}")
    return taste


def preference_score(image: Image.Image, taste: str) -> int:
    """1-10 like a person of one taste; EMPTY without a shape, at most SMEARED for a
    smear over a messy picture, whatever the taste.

    A colour: LIKED for a clean shape in it, falling with the hue's distance (red
    lover: orange 7-8, yellow ~5, green or blue 1-2). "big": rising with the shape's
    extent (SMALL_EXTENT -> 1, BIG_EXTENT -> LIKED), whatever its colour. "dark":
    falling with the background's brightness (black 9, gray 5, white 1).
    """
    check_taste(taste)
    pixels, background, foreground = _split(image)
    if foreground.mean() < MIN_COVERAGE:
        return EMPTY
    if taste == "big":
        extent = shape_extent(image) or 0.0
        score = _graded((extent - SMALL_EXTENT) / (BIG_EXTENT - SMALL_EXTENT))
    elif taste == "dark":
        level = float(background.mean())
        score = _graded((LIGHT_LEVEL - level) / (LIGHT_LEVEL - DARK_LEVEL))
    else:
        closeness = max(0.0, 1.0 - hue_distance(pixels[foreground].mean(0), taste) / 0.3)
        score = _graded(closeness**HUE_SHARPNESS)
    return score if plain_background(image) else min(score, SMEARED)


def split_invite(invite: str) -> tuple[str, str]:
    """An invite link `BASE/rate/login?token=T` -> (BASE, T)."""
    parts = urlsplit(invite)
    tokens = parse_qs(parts.query).get("token")
    if not tokens or "/rate/login" not in parts.path:
        raise ValueError(f"not an invite link (…/rate/login?token=…): {invite!r}")
    base = f"{parts.scheme}://{parts.netloc}{parts.path.split('/rate/login')[0]}"
    return base.rstrip("/"), tokens[0]


class ScriptedRater:
    """Rates every task it is offered until stopped; thread-safe counters for tests."""

    def __init__(
        self,
        invite: str,
        prefers: str = "red",
        idle_sleep_s: float = 0.2,
        timeout_s: float = 30,
        mode: Literal["score", "pair"] = "score",
    ) -> None:
        check_taste(prefers)
        self.base, token = split_invite(invite)
        self.prefers = prefers
        self.mode = mode
        self.idle_sleep_s = idle_sleep_s
        self.http = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )
        self.rated = 0
        self.liked = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rate_one(self) -> bool:
        """Rate the next task, if any; False when the queue is empty."""
        task = self.http.get("/rate/api/next", params={"mode": self.mode})
        task.raise_for_status()
        body = task.json()["task"]
        if body is None:
            return False
        scores = []
        for item in body["items"]:  # one image, or A and B of a pair
            png = self.http.get(f"/rate/image/{item['item_id']}")
            png.raise_for_status()
            scores.append(preference_score(Image.open(io.BytesIO(png.content)), self.prefers))
        score = max(scores)
        if body["mode"] == "pair":  # the one liked more; A on a tie
            rating = {"lease": body["lease"], "choice": "a" if scores[0] >= scores[1] else "b"}
        else:
            rating = {"lease": body["lease"], "score": score}
        answer = self.http.post("/rate/api/rate", json=rating)
        if answer.status_code not in (200, 409, 410):  # 409/410: the job ended meanwhile
            answer.raise_for_status()
        self.rated += 1
        self.liked += score >= LIKED - 1  # "liked": within a point of the best
        return True

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.rate_one():
                    self._stop.wait(self.idle_sleep_s)
            except httpx.TransportError as exc:  # server restarting or gone
                log.debug("rater: %s", exc)
                self._stop.wait(self.idle_sleep_s)

    def start(self) -> ScriptedRater:
        self._thread = threading.Thread(target=self.run, name="scripted-rater", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.http.close()


def main(
    invite: Annotated[str, typer.Argument(help="Invite link printed by `ddpo raters add`.")],
    prefers: Annotated[
        str, typer.Option(help=f"Taste: {', '.join(TASTES)} (big shapes, dark backgrounds).")
    ] = "red",
    seconds: Annotated[float, typer.Option(help="Stop after this long (0: never).")] = 0.0,
    mode: Annotated[
        str, typer.Option(help="score: rate images 1-10; pair: pick the better of two.")
    ] = "score",
) -> None:
    """Rate every queued image like a person of one taste (see preference_score)."""
    try:
        check_taste(prefers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--prefers") from exc
    if mode not in ("score", "pair"):
        raise typer.BadParameter("score or pair", param_hint="--mode")
    rater = ScriptedRater(invite, prefers, mode=mode)  # type: ignore[arg-type]
    typer.echo(f"rating at {rater.base}, liking {prefers} (Ctrl-C stops)")
    rater.start()
    started = time.monotonic()
    try:
        while seconds <= 0 or time.monotonic() - started < seconds:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        rater.stop()
    typer.echo(f"rated {rater.rated} task(s), liked {rater.liked}")


if __name__ == "__main__":
    typer.run(main)
