"""A second shapes world, written apart from the first (``eval.shapes``), to report on scenes that
no calibration saw.

Nothing here is tuned to the first world or to the demo model: only the vocabulary is shared (the
three shape words and six colour words the model knows), and the writer of the gRefCOCO layout
(``shapes.write_grefcoco``, which takes this module's scene maker). What differs, on purpose:

- **canvas**: a linear gradient between two pale tints in a random direction, with faint
  speckles (the first world: one flat tint with Gaussian noise);
- **layout**: objects on a jittered 3 × 3 grid of cells, 3–6 per scene (the first: rejection
  sampling anywhere, 2–4);
- **objects**: a continuous radius (8–15 % of the side), squares and triangles rotated, a dark
  outline on some, colours from their own prototypes with wider jitter;
- **sizes**: any side; the reported sets use 64 and 96 px;
- **expressions**: several templates ("a red circle", "the circle that is red", "red circle"), and
  for several targets plural category words ("the red shapes", "all the circles", "both squares",
  "the two blue objects").

Sets (``kinds``), each sentence typed in the written refs:

- ``presence``: ``present`` / ``absent`` pairs with the object count unchanged — in an absent
  scene the target is replaced by an object sharing its colour or its shape, and both kinds keep
  a colour-sharing and a shape-sharing distractor;
- ``discrimination``: ``colour-word`` (two objects of one shape, the target named by its colour)
  and ``shape-word`` (two of one colour, named by its shape);
- ``generalized``: ``single``, ``multi`` (plural category words, counts, "both", "all") and
  ``none`` (as ``absent``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .shapes import SHAPES, Obj, Scene, write_grefcoco

COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange")
PROTOTYPES = {  # this world's own colours for the shared colour words
    "red": (226, 52, 48),
    "green": (58, 172, 78),
    "blue": (52, 92, 228),
    "yellow": (242, 214, 48),
    "purple": (152, 68, 188),
    "orange": (246, 148, 42),
}
GRID = 3
SQUARE_REACH = 1.15  # a square's half-diagonal over its radius (the first world's squares: 1.2)
SINGLE_TEMPLATES = ("the {c} {s}", "a {c} {s}", "{c} {s}", "the {s} that is {c}", "the {s} which is {c}")
KINDS = {
    "presence": {"present": 0.5, "absent": 0.5},
    "discrimination": {"colour-word": 0.5, "shape-word": 0.5},
    "generalized": {"single": 0.4, "multi": 0.35, "none": 0.25},
}


def _rotated(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a square (half-diagonal ``r``) or a triangle (circumradius ``r``), rotated."""
    corners = 4 if shape == "square" else 3
    start = math.pi / 4 if shape == "square" else -math.pi / 2
    return [
        (
            x + r * math.cos(start + angle + 2 * math.pi * k / corners),
            y + r * math.sin(start + angle + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def draw(objects: list[Obj], size: int, rng: np.random.RandomState) -> Scene:
    """The canvas and the objects in order (later ones on top; they do not overlap)."""
    a, b = (rng.uniform(200, 248, 3) for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
    canvas = a * (1 - t) + b * t + rng.uniform(-3, 3, (size, size, 3))
    speckles = rng.rand(size, size) < 0.01
    canvas[speckles] -= rng.uniform(10, 30)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    masks = []
    for o in objects:
        fill = tuple(int(np.clip(v + rng.randint(-20, 21), 0, 255)) for v in PROTOTYPES[o.colour])
        outline = tuple(int(v * 0.55) for v in fill) if rng.rand() < 0.4 else None
        m = Image.new("L", (size, size), 0)
        if o.shape == "circle":
            box = [o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r]
            pen.ellipse(box, fill=fill, outline=outline)
            ImageDraw.Draw(m).ellipse(box, fill=1, outline=1)
        else:
            reach = SQUARE_REACH if o.shape == "square" else 1.0
            poly = _rotated(o.shape, o.x, o.y, o.r * reach, rng.uniform(-0.45, 0.45))
            pen.polygon(poly, fill=fill, outline=outline)
            ImageDraw.Draw(m).polygon(poly, fill=1, outline=1)
        masks.append(np.asarray(m, dtype=bool))
    return Scene(image, objects, masks)


def layout(specs: list[tuple[str, str]], size: int, rng: np.random.RandomState) -> list[Obj]:
    """``(shape, colour)`` specs placed in distinct cells of the jittered grid, in random order."""
    cells = rng.permutation(GRID * GRID)[: len(specs)]
    cell = size / GRID
    objs = []
    for (shape, colour), c in zip(specs, cells):
        reach = SQUARE_REACH if shape == "square" else 1.0  # a square's corners reach past r
        r = min(rng.uniform(0.08, 0.15) * size, (cell / 2 - 1) / reach)
        cx, cy = (c % GRID + 0.5) * cell, (c // GRID + 0.5) * cell
        room = cell / 2 - r * reach  # inside its cell: objects never overlap
        x, y = cx + rng.uniform(-room, room), cy + rng.uniform(-room, room)
        objs.append(Obj(shape, colour, "big" if r >= 0.12 * size else "small", x, y, r))
    return objs


def _others(rng: np.random.RandomState, n: int, avoid: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """``n`` random (shape, colour) pairs outside ``avoid`` (repeats allowed among themselves)."""
    out = []
    while len(out) < n:
        pair = (SHAPES[rng.randint(3)], COLOUR_NAMES[rng.randint(6)])
        if pair not in avoid:
            out.append(pair)
    return out


def _single(rng: np.random.RandomState, shape: str, colour: str) -> str:
    return SINGLE_TEMPLATES[rng.randint(len(SINGLE_TEMPLATES))].format(c=colour, s=shape)


def _target_and_sharers(rng: np.random.RandomState) -> tuple[str, str, list[tuple[str, str]]]:
    """A target (shape, colour) and the scene's other objects: one sharing its colour, one sharing its
    shape, 0–3 more that are not the target (3–6 objects with the target)."""
    shape, colour = SHAPES[rng.randint(3)], COLOUR_NAMES[rng.randint(6)]
    other_shape = [s for s in SHAPES if s != shape][rng.randint(2)]
    other_colour = [c for c in COLOUR_NAMES if c != colour][rng.randint(5)]
    rest = [(other_shape, colour), (shape, other_colour)] + _others(rng, rng.randint(0, 4), {(shape, colour)})
    return shape, colour, rest


def example(rng: np.random.RandomState, kind: str, size: int = 64) -> tuple[Scene, list[int], str]:
    """A scene, its target indices (none for ``absent`` / ``none``) and an expression of ``kind``
    (any kind of ``KINDS``' sets)."""
    if kind in ("present", "absent", "single", "none"):
        shape, colour, rest = _target_and_sharers(rng)
        if kind in ("present", "single"):
            specs, targets = [(shape, colour)] + rest, [0]
        else:  # the target's place taken by an object sharing its colour or its shape: the count stays
            swap = (
                ([s for s in SHAPES if s != shape][rng.randint(2)], colour)
                if rng.rand() < 0.5
                else (shape, [c for c in COLOUR_NAMES if c != colour][rng.randint(5)])
            )
            specs, targets = [swap] + rest, []
        return draw(layout(specs, size, rng), size, rng), targets, _single(rng, shape, colour)
    if kind in ("colour-word", "shape-word"):
        shape, colour = SHAPES[rng.randint(3)], COLOUR_NAMES[rng.randint(6)]
        if kind == "colour-word":  # one shape in two colours: only the colour word tells them apart
            twin = (shape, [c for c in COLOUR_NAMES if c != colour][rng.randint(5)])
            avoid = {(shape, c) for c in COLOUR_NAMES}
        else:  # one colour on two shapes: only the shape word does
            twin = ([s for s in SHAPES if s != shape][rng.randint(2)], colour)
            avoid = {(s, colour) for s in SHAPES}
        specs = [(shape, colour), twin] + _others(rng, rng.randint(1, 4), avoid)
        return draw(layout(specs, size, rng), size, rng), [0], _single(rng, shape, colour)
    if kind == "multi":
        return _multi(rng, size)
    raise ValueError(f"unknown kind {kind!r}; choose one of {sorted(k for ks in KINDS.values() for k in ks)}")


def _multi(rng: np.random.RandomState, size: int) -> tuple[Scene, list[int], str]:
    """2–3 targets sharing what the expression names — a colour ("the red shapes"), a shape ("all the
    circles", "both squares") or both ("the two red circles") — among distractors that share the
    rest; the count word, when there is one, is right."""
    k = 2 if rng.rand() < 0.6 else 3
    shape, colour = SHAPES[rng.randint(3)], COLOUR_NAMES[rng.randint(6)]
    form = ("colour", "shape", "both")[rng.randint(3)]
    if form == "colour":  # targets: k objects of this colour (any shapes); distractors: other colours
        targets = [(SHAPES[rng.randint(3)], colour) for _ in range(k)]
        others = _others(rng, rng.randint(1, 7 - k), {(s, colour) for s in SHAPES})
        noun = ("shapes", "objects", "things")[rng.randint(3)]
        expr = (f"the {colour} {noun}", f"all the {colour} {noun}", f"the {_count(k)} {colour} {noun}")[rng.randint(3)]
    elif form == "shape":
        targets = [(shape, COLOUR_NAMES[rng.randint(6)]) for _ in range(k)]
        others = _others(rng, rng.randint(1, 7 - k), {(shape, c) for c in COLOUR_NAMES})
        expr = (
            f"both {shape}s" if k == 2 and rng.rand() < 0.5 else (f"all the {shape}s", f"the {shape}s")[rng.randint(2)]
        )
    else:
        targets = [(shape, colour)] * k
        sharers = [
            ([s for s in SHAPES if s != shape][rng.randint(2)], colour),
            (shape, [c for c in COLOUR_NAMES if c != colour][rng.randint(5)]),
        ]
        others = sharers + _others(rng, rng.randint(0, 5 - k), {(shape, colour)})
        expr = (f"the {_count(k)} {colour} {shape}s", f"all {colour} {shape}s")[rng.randint(2)]
    objs = layout(targets + others, size, rng)
    return draw(objs, size, rng), list(range(k)), expr


def _count(k: int) -> str:
    return {2: "two", 3: "three"}[k]


def write(
    out: str | Path, kind_set: str, n: int, seed: int, size: int = 64, split: str = "val", dataset: str | None = None
) -> Path:
    """``n`` scenes of one of ``KINDS``' sets in gRefCOCO's layout under ``out/<dataset>/``
    (default ``shapes-b-<set>-<size>``); ``python -m eval grefcoco --dataset <dataset>`` scores them."""
    if kind_set not in KINDS:
        raise ValueError(f"unknown set {kind_set!r}; choose one of {sorted(KINDS)}")
    name = dataset or f"shapes-b-{kind_set}-{size}"
    return write_grefcoco(out, n, seed, split, name, size, kinds=KINDS[kind_set], make=example)
