"""A second judge of prompt fidelity that learns nothing: attributes read off pixel colours.

The classifier behind `prompt_fidelity` is itself trained, so a model could learn to please
it without drawing the prompt. This judge measures instead: the background is the colour of
the image's border, the shape's colour that of the pixels farthest from it, and the shape
from how the largest foreground blob fills its bounding box: a triangle (apex up) is narrow
at the top and wide at the bottom, a square fills the box's corners, a circle leaves them
empty. Not the whole box's fill, because the models draw soft, ragged edges: a wobbly
square's fill falls to a circle's 0.785 and a rounded circle's to a triangle's 0.5, while
the taper and the corners stay where they were.
numpy only, like shapes.py, so tests, tools and the demo's report can all use it.
"""

from __future__ import annotations

import numpy as np

from shared import shapes

#: A corner region is the triangle cut off the bounding box by a line this far along both
#: sides (as a fraction of each side): inside it a circle draws nothing, a square everything.
_CORNER_LEG = 0.3
#: Cuts at the midpoints of the gaps measured on 288 drawings after a round trip through the
#: built-in VAE (2026-12-06): width of the top third over the bottom third, triangles
#: 0.15-0.37, circles and squares 0.86-1.1; mean corner fill, circles 0.00-0.14, squares
#: 0.67-1.00. Set on drawings, never on the classifier's verdicts;
#: tests/test_rule_judge.py keeps round-tripped drawings 0.1 clear of both.
_TRIANGLE_TAPER_BELOW = 0.6
_SQUARE_CORNERS_ABOVE = 0.40
#: Foreground pixels are those more than this fraction of the way from background to shape.
_EDGE = 0.5


def _nearest(rgb: np.ndarray, names: tuple[str, ...]) -> str:
    table = np.array([shapes.RGB[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((table - rgb) ** 2).sum(-1)))]


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (stray specks left out)."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:  # every pixel takes its neighbours' largest label until nothing changes
        p = np.pad(labels, 1)
        spread = np.maximum.reduce(
            [p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]
        )
        spread = np.where(mask, spread, 0)
        if np.array_equal(spread, labels):
            break
        labels = spread
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[np.argmax(counts)]


def box_profile(box: np.ndarray) -> tuple[float, float]:
    """(taper, corners) of a boolean mask cropped to its bounding box: the mean width of its
    top third over that of its bottom third, and the mean fill of the four corner regions."""
    h, w = box.shape
    widths = box.mean(axis=1)
    third = max(1, h // 3)
    taper = widths[:third].mean() / max(widths[-third:].mean(), 1e-6)
    y = (np.arange(h)[:, None] + 0.5) / h
    x = (np.arange(w)[None, :] + 0.5) / w
    regions = [(x, y), (1 - x, y), (x, 1 - y), (1 - x, 1 - y)]
    corners = np.mean([box[(a + b) < _CORNER_LEG].mean() for a, b in regions])
    return float(taper), float(corners)


def shape_of(mask: np.ndarray) -> str:
    """The shape a boolean foreground mask draws, by its largest blob's bounding box."""
    if not mask.any():
        return "square"  # nothing drawn: a guess that is rarely right
    blob = largest_blob(mask)
    rows, cols = np.nonzero(blob)
    box = blob[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    taper, corners = box_profile(box)
    if taper < _TRIANGLE_TAPER_BELOW:
        return "triangle"
    return "square" if corners > _SQUARE_CORNERS_ABOVE else "circle"


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
    return shape_of(mask), colour, background


def matches(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Per image: are all three attributes of its prompt right (False if unparseable)?"""
    out = []
    for image, prompt in zip(images, prompts, strict=True):
        wanted = shapes.parse_prompt(prompt)
        out.append(wanted is not None and judge(image) == wanted)
    return np.array(out, dtype=bool)
