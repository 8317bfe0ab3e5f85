"""Appearance variety for training scenes: the same objects, drawn less uniformly.

The first shapes world draws every square and triangle upright, filled, on one flat tint. A model
trained only on that learns what those exact pixels look like, not what a square is: its shape
words stopped lighting squares as soon as they were turned or outlined (measured on the second
world, ``eval.shapes_b``: shape-word share on the shapes it names 0.74 there, 0.86 at home). A real
DiT has seen every orientation, outline and background, so a stand-in for one should too.

``restyle`` keeps the scene — objects, their words, positions, sizes, and so every expression and
denotation — and redraws it: polygons turned by any angle, an outline on some objects (darker or
lighter than the fill), and a background that is a flat tint or a gradient between two tints,
with noise and sometimes sparse dots. Turning keeps each corner at its distance from the centre,
so objects that did not overlap still do not. Masks are redrawn with the pixels.

Used by training only (``DemoConfig.varied``); the evaluation worlds are untouched.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from eval.shapes import COLOURS, Scene, _polygon


def _turned(poly: list[tuple[float, float]], x: float, y: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(x + (px - x) * c - (py - y) * s, y + (px - x) * s + (py - y) * c) for px, py in poly]


def _canvas(size: int, rng: np.random.RandomState) -> np.ndarray:
    a = np.array([rng.randint(195, 252) for _ in range(3)], dtype=np.float32)
    if rng.rand() < 0.5:
        arr = np.broadcast_to(a, (size, size, 3)).copy()
    else:
        b = np.array([rng.randint(195, 252) for _ in range(3)], dtype=np.float32)
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (xx * math.cos(theta) + yy * math.sin(theta)).astype(np.float32)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        arr = a + (b - a) * t[..., None]
    arr += rng.normal(0, rng.uniform(1.5, 5.0), arr.shape)
    if rng.rand() < 0.4:
        dots = rng.rand(size, size) < rng.uniform(0.003, 0.02)
        arr[dots] += rng.choice([-1.0, 1.0]) * rng.uniform(10, 35)
    return arr


def restyle(scene: Scene, size: int, rng: np.random.RandomState) -> Scene:
    """``scene`` redrawn (same objects, same order) with turned polygons, some outlines and a varied
    background; its masks redrawn to match."""
    im = Image.fromarray(np.clip(_canvas(size, rng), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    masks = []
    for o in scene.objects:
        fill = tuple(int(np.clip(c + rng.randint(-12, 13), 0, 255)) for c in COLOURS[o.colour])
        outline = None
        if rng.rand() < 0.35:
            k = rng.uniform(0.45, 0.75) if rng.rand() < 0.7 else rng.uniform(1.25, 1.5)
            outline = tuple(int(np.clip(v * k, 0, 255)) for v in fill)
        m = Image.new("L", (size, size), 0)
        pen = ImageDraw.Draw(m)
        poly = _polygon(o.shape, o.x, o.y, o.r)
        if poly is None:
            box = [o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r]
            draw.ellipse(box, fill=fill, outline=outline)
            pen.ellipse(box, fill=1, outline=1)
        else:
            poly = _turned(poly, o.x, o.y, rng.uniform(0, 2 * math.pi))
            draw.polygon(poly, fill=fill, outline=outline)
            pen.polygon(poly, fill=1, outline=1)
        masks.append(np.asarray(m, dtype=bool))
    return Scene(im, list(scene.objects), masks)
