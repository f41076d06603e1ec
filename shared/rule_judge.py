"""A second judge of prompt fidelity that learns nothing: attributes read off pixel colours.

The classifier behind `prompt_fidelity` is itself trained, so a model could learn to please
it without drawing the prompt. This judge measures instead: the background is the colour of
the image's border, the shape's colour that of the pixels farthest from it, and the shape
how much of its bounding box the foreground fills (square 1, circle pi/4, triangle 1/2).
numpy only, like shapes.py, so tests, tools and the demo's report can all use it.
"""

from __future__ import annotations

import numpy as np

from shared import shapes

#: Fill of the bounding box between the ideal shapes' fills (triangle 0.5, circle 0.785,
#: square 1.0). Through the built-in VAE, 144 drawings filled: triangles 0.53-0.66,
#: circles 0.75-0.81, squares 0.90-0.99; the cuts are the midpoints of those gaps.
_TRIANGLE_BELOW = 0.70
_CIRCLE_BELOW = 0.85
#: Foreground pixels are those more than this fraction of the way from background to shape.
_EDGE = 0.5


def _nearest(rgb: np.ndarray, names: tuple[str, ...]) -> str:
    table = np.array([shapes.RGB[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((table - rgb) ** 2).sum(-1)))]


def judge(image: np.ndarray) -> tuple[str, str, str]:
    """(shape, colour, background) of one HxWx3 uint8 image, by rule."""
    img = np.asarray(image, dtype=np.float64)[..., :3]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, shapes.BACKGROUNDS)
    dist = np.sqrt(((img - bg_rgb) ** 2).sum(-1))
    far = dist >= np.quantile(dist, 0.97)  # the shape's core: its most distinct pixels
    fg_rgb = np.median(img[far], axis=0)
    colour = _nearest(fg_rgb, shapes.COLOURS)
    mask = dist > _EDGE * np.sqrt(((fg_rgb - bg_rgb) ** 2).sum())
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return "square", colour, background  # nothing drawn: a guess that is rarely right
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = mask.sum() / box
    shape = "triangle" if fill < _TRIANGLE_BELOW else "circle" if fill < _CIRCLE_BELOW else "square"
    return shape, colour, background


def matches(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Per image: are all three attributes of its prompt right (False if unparseable)?"""
    out = []
    for image, prompt in zip(images, prompts, strict=True):
        wanted = shapes.parse_prompt(prompt)
        out.append(wanted is not None and judge(image) == wanted)
    return np.array(out, dtype=bool)
