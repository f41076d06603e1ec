"""A scripted rater: rates over the rater API like a person who likes one colour.

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
from typing import Annotated
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


def shape_colour(image: Image.Image) -> np.ndarray | None:
    """Mean RGB of the pixels that stand out from the background; None if too few do."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = np.median(_corners(pixels), axis=0)
    foreground = np.abs(pixels - background).max(-1) > FOREGROUND_DISTANCE
    if foreground.mean() < MIN_COVERAGE:
        return None
    return pixels[foreground].mean(0)


def hue_distance(rgb: np.ndarray, colour: str) -> float:
    """Distance between two hues on the colour wheel, 0 (same) to 0.5 (opposite)."""
    hue = colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255.0))[0]
    target = colorsys.rgb_to_hsv(*(np.asarray(RGB[colour]) / 255.0))[0]
    d = abs(hue - target) % 1.0
    return min(d, 1.0 - d)


def preference_score(image: Image.Image, colour: str) -> int:
    """1-10 like a person fond of one colour: LIKED for a clean shape in that colour,
    falling with the hue's distance from it (red lover: orange 7-8, yellow ~5, green
    or blue 1-2); a smear of any colour over a messy picture gets at most SMEARED."""
    rgb = shape_colour(image)
    if rgb is None:
        return EMPTY
    closeness = max(0.0, 1.0 - hue_distance(rgb, colour) / 0.3)
    score = round(EMPTY + (LIKED - EMPTY) * closeness**HUE_SHARPNESS)
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
        self, invite: str, prefers: str = "red", idle_sleep_s: float = 0.2, timeout_s: float = 30
    ) -> None:
        if prefers not in COLOURS:
            raise ValueError(f"prefers must be one of {', '.join(COLOURS)}, not {prefers!r}")
        self.base, token = split_invite(invite)
        self.prefers = prefers
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
        task = self.http.get("/rate/api/next", params={"mode": "score"})
        task.raise_for_status()
        body = task.json()["task"]
        if body is None:
            return False
        png = self.http.get(f"/rate/image/{body['items'][0]['item_id']}")
        png.raise_for_status()
        score = preference_score(Image.open(io.BytesIO(png.content)), self.prefers)
        answer = self.http.post("/rate/api/rate", json={"lease": body["lease"], "score": score})
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
    prefers: Annotated[str, typer.Option(help=f"Colour to like: {', '.join(COLOURS)}.")] = "red",
    seconds: Annotated[float, typer.Option(help="Stop after this long (0: never).")] = 0.0,
) -> None:
    """Rate every queued image like a person fond of one colour (see preference_score)."""
    rater = ScriptedRater(invite, prefers)
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
    typer.echo(f"rated {rater.rated} image(s), liked {rater.liked}")


if __name__ == "__main__":
    typer.run(main)
