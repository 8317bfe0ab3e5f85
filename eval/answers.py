"""Answer grounding data in the VizWiz-VQA-Grounding layout, a generated shapes set in that
layout, run by ``eval.runner.run_answers``.

Layout (``root``): ``<split>_grounding.json`` — a dict keyed by image file name with
``question``, ``answers`` (strings or ``{"answer": ...}``), ``most_common_answer``, ``height``,
``width`` and ``answer_grounding`` (a polygon: list of ``{"x", "y"}``); images in ``<split>/``;
optional binary masks in ``binary_masks_png/<split>/<stem>.png`` (used when present, as the
2025 challenge ships them). Runs: ``eval.runner.run_answers`` (``python -m eval vizwiz``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


@dataclass
class AnswerSample:
    image_path: Path
    question: str
    answer: str
    mask: np.ndarray  # bool [H, W]


class VizWizGrounding:
    def __init__(self, root: str | Path, split: str = "val"):
        self.root = Path(root)
        self.split = split
        ann = self.root / f"{split}_grounding.json"
        if not ann.is_file():
            raise FileNotFoundError(f"{ann} not found (VizWiz-VQA-Grounding layout)")
        self.entries = sorted(json.loads(ann.read_text()).items())

    def __len__(self) -> int:
        return len(self.entries)

    def sample_id(self, i: int) -> str:
        return f"{self.split}:{self.entries[i][0]}"

    def __getitem__(self, i: int) -> AnswerSample:
        name, e = self.entries[i]
        answer = e.get("most_common_answer")
        if not answer and e.get("answers"):
            first = e["answers"][0]
            answer = first["answer"] if isinstance(first, dict) else first
        png = self.root / "binary_masks_png" / self.split / (Path(name).stem + ".png")
        if png.is_file():
            mask = np.asarray(Image.open(png).convert("L")) > 127
        else:
            m = Image.new("L", (int(e["width"]), int(e["height"])), 0)
            pts = [(float(p["x"]), float(p["y"])) for p in e["answer_grounding"]]
            ImageDraw.Draw(m).polygon(pts, fill=1)
            mask = np.asarray(m, dtype=bool)
        return AnswerSample(self.root / self.split / name, e["question"], answer or "", mask)


def write_shapes_vizwiz(root: str | Path, n: int, seed: int, split: str = "train", size: int = 64) -> Path:
    """``n`` shapes scenes with questions in the VizWiz layout: "what shape is red?" → "circle"
    (the evidence is the red circle), "what colour is the square?" → "blue"."""
    from .shapes import referring_scene

    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    ann = {}
    for i in range(n):
        ask_shape = i % 2 == 0
        key = (lambda x: x.colour) if ask_shape else (lambda x: x.shape)
        t = None
        while t is None:  # an object whose asked-about attribute is unique in its scene
            scene, _, _ = referring_scene(rng, "attribute", size)
            unique = [j for j, x in enumerate(scene.objects) if sum(key(y) == key(x) for y in scene.objects) == 1]
            t = unique[rng.randint(len(unique))] if unique else None
        o = scene.objects[t]
        q, a = (f"what shape is {o.colour}?", o.shape) if ask_shape else (f"what colour is the {o.shape}?", o.colour)
        name = f"VizWiz_{split}_{seed}_{i:05d}.png"
        scene.image.save(root / split / name)
        poly = _outline(scene.masks[t])
        ann[name] = {
            "question": q,
            "answers": [{"answer": a, "answer_confidence": "yes"}] * 3,
            "most_common_answer": a,
            "height": size,
            "width": size,
            "answer_type": "other",
            "answer_grounding": [{"x": float(x), "y": float(y)} for x, y in poly],
        }
    (root / f"{split}_grounding.json").write_text(json.dumps(ann))
    return root


def _outline(mask: np.ndarray) -> list[tuple[float, float]]:
    """A polygon around a convex mask: its convex hull (OpenCV), pixel corners included."""
    import cv2

    ys, xs = np.nonzero(mask)
    pts = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(np.float32)
    return [tuple(p) for p in cv2.convexHull(pts)[:, 0]]
