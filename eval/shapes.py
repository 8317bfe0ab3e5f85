"""A synthetic referring world: coloured shapes on light backgrounds, with distractors.

Every scene has 2–4 non-overlapping objects (shape × colour × size). Referring expressions name
one target so that both attribute words are needed: scenes repeat colours and shapes, so a
distractor shares the target's colour and another its shape. Expression types: ``attribute``
("the red circle"), ``size`` ("the big green square", with a same-kind small one present),
``position`` ("the circle at the top", several circles present), ``relation`` ("the square left
of the yellow circle"). Captions listing every object are what the demo model is trained on.

``write_refer`` writes scenes in the RefCOCO refer format (``refs(unc).p``, ``instances.json``
with RLE masks, PNG images) so the same runner and metrics evaluate them.

One module (~430 lines): the scene generator, the expression grammar and the writers share the
world's vocabulary and must change together.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 215),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 170),
    "orange": (240, 130, 20),
}
SIZES = {"small": (6, 7), "big": (10, 12)}  # radius range in pixels at 64 px
TYPE_WEIGHTS = {"attribute": 0.6, "size": 0.15, "position": 0.15, "relation": 0.1}


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    x: float
    y: float
    r: float

    def words(self, with_size: bool) -> str:
        return f"{self.size + ' ' if with_size else ''}{self.colour} {self.shape}"


@dataclass
class Scene:
    image: Image.Image
    objects: list[Obj]
    masks: list[np.ndarray]  # bool [H, W] per object


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.85
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if shape == "triangle":
        return [(x, y - r), (x + r * 0.95, y + r * 0.75), (x - r * 0.95, y + r * 0.75)]
    return None


def render(objects: list[Obj], size: int, rng: np.random.RandomState) -> Scene:
    bg = np.array([rng.randint(205, 250) for _ in range(3)], dtype=np.float32)
    arr = np.broadcast_to(bg, (size, size, 3)).copy()
    arr += rng.normal(0, 3.0, arr.shape)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    masks = []
    for o in objects:
        m = Image.new("L", (size, size), 0)
        md = ImageDraw.Draw(m)
        poly = _polygon(o.shape, o.x, o.y, o.r)
        colour = tuple(int(np.clip(c + rng.randint(-12, 13), 0, 255)) for c in COLOURS[o.colour])
        if poly is None:
            box = [o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r]
            draw.ellipse(box, fill=colour)
            md.ellipse(box, fill=1)
        else:
            draw.polygon(poly, fill=colour)
            md.polygon(poly, fill=1)
        masks.append(np.asarray(m, dtype=bool))
    return Scene(im, objects, masks)


def _place(rng: np.random.RandomState, objs: list[Obj], r: float, size: int) -> tuple[float, float] | None:
    for _ in range(200):
        x, y = rng.uniform(r + 1, size - r - 1, 2)
        if all(np.hypot(x - o.x, y - o.y) > r + o.r + 2 for o in objs):
            return float(x), float(y)
    return None


def _new(rng, objs, shape, colour, size_name, size):
    lo, hi = SIZES[size_name]
    r = rng.uniform(lo, hi + 1) * size / 64
    pos = _place(rng, objs, r, size)
    if pos is None:
        return None
    return Obj(shape, colour, size_name, pos[0], pos[1], r)


def random_scene(rng: np.random.RandomState, size: int = 64) -> Scene:
    """2–4 objects with repeated colours and shapes (for training captions)."""
    n = rng.randint(2, 5)
    objs: list[Obj] = []
    while len(objs) < n:
        if objs and rng.rand() < 0.5:  # repeat a colour or a shape of an earlier object
            ref = objs[rng.randint(len(objs))]
            shape = ref.shape if rng.rand() < 0.5 else SHAPES[rng.randint(len(SHAPES))]
            colour = ref.colour if shape != ref.shape else list(COLOURS)[rng.randint(len(COLOURS))]
        else:
            shape, colour = SHAPES[rng.randint(len(SHAPES))], list(COLOURS)[rng.randint(len(COLOURS))]
        if any(o.shape == shape and o.colour == colour for o in objs):
            continue
        o = _new(rng, objs, shape, colour, list(SIZES)[rng.randint(2)], size)
        if o is None:
            break
        objs.append(o)
    return render(objs, size, rng)


def position_phrase(o: Obj, size: int) -> str | None:
    """Where ``o`` lies by thirds of the image: "at the top left", "at the bottom"; None in the middle."""
    v = "top" if o.y < size / 3 else "bottom" if o.y > 2 * size / 3 else ""
    h = "left" if o.x < size / 3 else "right" if o.x > 2 * size / 3 else ""
    words = " ".join(w for w in (v, h) if w)
    return f"at the {words}" if words else None


def caption_spans(
    scene: Scene, rng: np.random.RandomState, position: float = 0.0, subset: float = 0.0
) -> tuple[str, list[tuple[int, int, int]]]:
    """A caption and, per named object, ``(object index, start, end)`` of its phrase in it.

    Objects come in random order: "a big red circle, a green square and a small blue triangle".
    With probability ``subset`` only a random non-empty part of the objects is named (as a
    referring prompt names one object among several); each named object gets its position
    phrase ("at the top left") with probability ``position``.
    """
    order = rng.permutation(len(scene.objects))
    if subset and len(order) > 1 and rng.rand() < subset:
        order = order[: rng.randint(1, len(order))]
    size = scene.image.size[0]
    phrases = []
    for i in order:
        o = scene.objects[i]
        text = f"a {o.words(with_size=rng.rand() < 0.6)}"
        if position:
            where = position_phrase(o, size)
            if where and rng.rand() < position:
                text += " " + where
        phrases.append((int(i), text))
    text, spans = "", []
    for j, (i, phrase) in enumerate(phrases):
        if j:
            text += " and " if j == len(phrases) - 1 else ", "
        spans.append((i, len(text), len(text) + len(phrase)))
        text += phrase
    return text, spans


def caption(scene: Scene, rng: np.random.RandomState, position: float = 0.0, subset: float = 0.0) -> str:
    """The text of ``caption_spans``."""
    return caption_spans(scene, rng, position, subset)[0]


CATEGORY_WORDS = ("shape", "object", "thing")  # name every object (singular or plural)
POSITION_WORDS = ("top", "bottom", "left", "right")


def denotation(word: str, scene: Scene, relational: bool = False) -> np.ndarray | None:
    """bool ``[H, W]``: what ``word`` denotes in ``scene`` by itself — every object of a colour, of a
    shape (singular or plural) or of a size, every object for a category noun ("shapes", "things"),
    the third of the image a position word names (``relational``: "left" / "right" of an anchor
    denote no region of their own: None) — or None for words that denote nothing alone (articles,
    counts, "of", "both") and for words whose objects the scene does not hold. A real DiT's token
    columns light what their word denotes; the demo model is taught the same with these."""
    w = word.lower()
    stem = w[:-1] if w.endswith("s") and w[:-1] in (*SHAPES, *CATEGORY_WORDS) else w
    size = scene.image.size[0]
    if stem in POSITION_WORDS:
        if relational and stem in ("left", "right"):
            return None
        yy, xx = np.mgrid[0:size, 0:size]
        third = {"top": yy < size / 3, "bottom": yy > 2 * size / 3, "left": xx < size / 3, "right": xx > 2 * size / 3}
        return third[stem]
    if stem in COLOURS:
        chosen = [o.colour == stem for o in scene.objects]
    elif stem in SHAPES:
        chosen = [o.shape == stem for o in scene.objects]
    elif stem in SIZES:
        chosen = [o.size == stem for o in scene.objects]
    elif stem in CATEGORY_WORDS:
        chosen = [True] * len(scene.objects)
    else:
        return None
    if not any(chosen):
        return None
    return np.any([m for m, c in zip(scene.masks, chosen) if c], axis=0)


def word_spans(text: str, scene: Scene) -> list[tuple[np.ndarray, int, int]]:
    """``(denotation mask, start, end)`` of each word of ``text`` that denotes something in ``scene``
    (``denotation``; "left" / "right" followed by "of" are relational)."""
    import re

    words = list(re.finditer(r"[A-Za-z]+", text))
    out = []
    for j, m in enumerate(words):
        relational = j + 1 < len(words) and words[j + 1].group().lower() == "of"
        mask = denotation(m.group(), scene, relational)
        if mask is not None:
            out.append((mask, m.start(), m.end()))
    return out


def referring_scene(rng: np.random.RandomState, kind: str, size: int = 64) -> tuple[Scene, int, str]:
    """A scene, its target index and an unambiguous expression of type ``kind``."""
    scene, target, expr, _ = referring_example(rng, kind, size)
    return scene, target, expr


def _place_all(rng: np.random.RandomState, specs: list[tuple[str, str, str]], size: int) -> list[Obj] | None:
    """Objects for ``(shape, colour, size name)`` specs, placed without overlap; None when one
    does not fit (the caller draws a new scene)."""
    objs: list[Obj] = []
    for s, c, z in specs:
        o = _new(rng, objs, s, c, z, size)
        if o is None:
            return None
        objs.append(o)
    return objs


def _pick(rng: np.random.RandomState) -> tuple[str, str, str, str]:
    """A target shape and colour, and another shape and colour (four draws, in this order)."""
    shapes, colours = list(SHAPES), list(COLOURS)
    shape, colour = shapes[rng.randint(3)], colours[rng.randint(6)]
    other_shape = [s for s in shapes if s != shape][rng.randint(2)]
    other_colour = [c for c in colours if c != colour][rng.randint(5)]
    return shape, colour, other_shape, other_colour


def referring_example(
    rng: np.random.RandomState, kind: str, size: int = 64
) -> tuple[Scene, int, str, list[tuple[int, int, int]]]:
    """``referring_scene`` plus, as ``caption_spans`` gives them, ``(object, start, end)`` of the
    words that describe each object: the whole expression describes the target, except a
    relation's complement ("the square left | of the yellow circle"), which describes its anchor."""
    while True:
        shape, colour, other_shape, other_colour = _pick(rng)
        tsize = list(SIZES)[rng.randint(2)]
        specs = [(shape, colour, tsize)]
        if kind == "attribute":
            specs += [
                (other_shape, colour, list(SIZES)[rng.randint(2)]),
                (shape, other_colour, list(SIZES)[rng.randint(2)]),
            ]
        elif kind == "size":
            tsize = "big"
            specs = [(shape, colour, "big"), (shape, colour, "small"), (other_shape, colour, "big")]
        elif kind == "position":
            specs += [(shape, other_colour, list(SIZES)[rng.randint(2)]), (other_shape, colour, "small")]
        elif kind == "relation":
            anchor = (other_shape, other_colour, "big")
            specs += [(shape, colour if rng.rand() < 0.5 else other_colour, tsize), anchor]
        if rng.rand() < 0.4 and kind in ("attribute", "size"):
            specs.append((other_shape, other_colour, list(SIZES)[rng.randint(2)]))
        objs = _place_all(rng, specs, size)
        if objs is None:
            continue
        t = objs[0]
        if kind == "attribute":
            expr = f"the {t.colour} {t.shape}"
        elif kind == "size":
            expr = f"the big {t.colour} {t.shape}"
        elif kind == "position":
            same = [o for o in objs if o.shape == t.shape]
            dirs = {"top": lambda o: -o.y, "bottom": lambda o: o.y, "left": lambda o: -o.x, "right": lambda o: o.x}
            name = list(dirs)[rng.randint(4)]
            key = dirs[name]
            ranked = sorted(same, key=key, reverse=True)
            if ranked[0] is not t or key(ranked[0]) - key(ranked[1]) < 8:
                continue
            expr = f"the {t.shape} at the {name}"
        else:  # relation: target left/right of the anchor, the other same-shape object on the other side
            a, other = objs[2], objs[1]
            side = "left" if t.x < a.x else "right"
            if (other.x < a.x) == (t.x < a.x) or abs(t.x - a.x) < 8:
                continue
            expr = f"the {t.shape} {side} of the {a.colour} {a.shape}"
            head = len(f"the {t.shape} {side}")
            return render(objs, size, rng), 0, expr, [(0, 0, head), (2, head, len(expr))]
        return render(objs, size, rng), 0, expr, [(0, 0, len(expr))]


def presence_scenes(n: int, seed: int, size: int = 64) -> list[tuple[Image.Image, str, int]]:
    """``n`` (image, expression, label) triples for presence calibration: an attribute
    expression ("the red circle") over a scene with distractors that share its colour and its
    shape; for label 0 the target is taken out before rendering, so only distractors remain."""
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        scene, target, expr = referring_scene(rng, "attribute", size)
        label = int(i % 2 == 0)
        if not label:
            scene = render([o for j, o in enumerate(scene.objects) if j != target], size, rng)
        out.append((scene.image, expr, label))
    return out


def _write_scenes(
    out: str | Path, dataset: str, n: int, seed: int, split: str, size: int, kind_weights: dict, make
) -> tuple[Path, list, list, list]:
    """``n`` scenes of kinds drawn by ``kind_weights`` from ``make(rng, kind, size)`` (a scene
    first), saved under ``out/<dataset>/images``: (folder, COCO images, annotations, and per scene
    ``(i, kind, make's result, file name, image id)``)."""
    folder = Path(out) / dataset
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    kinds, weights = list(kind_weights), np.array(list(kind_weights.values()))
    images, anns, made = [], [], []
    for i in range(n):
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        result = make(rng, kind, size)
        name = f"{split}_{seed}_{i:06d}.png"
        _add_scene(result[0], i + 1, img_dir / name, size, images, anns)
        made.append((i, kind, result, name, i + 1))
    return folder, images, anns, made


def _add_scene(scene: Scene, image_id: int, path: Path, size: int, images: list, anns: list) -> None:
    """Save a scene's image and append its COCO image record and one RLE annotation per object
    (ids ``image_id · 10 + j``)."""
    from pycocotools import mask as mask_utils

    scene.image.save(path)
    images.append({"id": image_id, "file_name": path.name, "width": size, "height": size})
    for j, (o, m) in enumerate(zip(scene.objects, scene.masks)):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        ys, xs = np.nonzero(m)
        anns.append(
            {
                "id": image_id * 10 + j,
                "image_id": image_id,
                "category_id": SHAPES.index(o.shape) + 1,
                "segmentation": rle,
                "area": float(m.sum()),
                "iscrowd": 0,
                "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
                "attributes": {"colour": o.colour, "size": o.size},
            }
        )


def write_refer(
    out: str | Path, n: int, seed: int, split: str = "val", dataset: str = "shapes", size: int = 64
) -> Path:
    """``n`` referring scenes as a refer-format dataset under ``out/<dataset>/`` (images in ``images/``)."""
    folder, images, anns, made = _write_scenes(out, dataset, n, seed, split, size, TYPE_WEIGHTS, referring_scene)
    refs = []
    for i, kind, (scene, target, expr), name, image_id in made:
        refs.append(
            {
                "ref_id": i,
                "ann_id": image_id * 10 + target,
                "image_id": image_id,
                "split": split,
                "category_id": SHAPES.index(scene.objects[target].shape) + 1,
                "file_name": name,
                "sentences": [{"sent_id": i, "sent": expr, "raw": expr, "tokens": expr.split(), "type": kind}],
                "sent_ids": [i],
            }
        )
    with open(folder / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    (folder / "instances.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": k + 1, "name": s} for k, s in enumerate(SHAPES)],
            }
        )
    )
    return folder


# --- generalized referring: several targets, or none ---------------------------------------------
GENERALIZED_WEIGHTS = {"single": 0.5, "multi": 0.25, "none": 0.25}
_COUNT_WORDS = {2: "two", 3: "three"}


def generalized_example(rng: np.random.RandomState, kind: str, size: int = 64) -> tuple[Scene, list[int], str]:
    """A scene, its target indices and an expression of generalized type ``kind``: ``single``
    (an attribute expression, one target), ``multi`` (2–3 objects of one colour and shape among
    distractors sharing one of the two, named with a count, "both" or "all"), ``none`` (an
    attribute expression whose object was taken out: only its distractors remain)."""
    if kind == "single":
        scene, target, expr = referring_scene(rng, "attribute", size)
        return scene, [target], expr
    if kind == "none":
        scene, target, expr = referring_scene(rng, "attribute", size)
        rest = [o for j, o in enumerate(scene.objects) if j != target]
        return render(rest, size, rng), [], expr
    if kind != "multi":
        raise ValueError(f"unknown generalized kind {kind!r}; choose one of {list(GENERALIZED_WEIGHTS)}")
    while True:
        shape, colour, other_shape, other_colour = _pick(rng)
        k = 2 if rng.rand() < 0.7 else 3
        specs = [(shape, colour, "small")] * k + [(other_shape, colour, "small"), (shape, other_colour, "small")]
        objs = _place_all(rng, specs, size)
        if objs is None:
            continue
        form = rng.randint(3)
        if form == 0:
            expr = f"the {_COUNT_WORDS[k]} {colour} {shape}s"
        elif form == 1 and k == 2:
            expr = f"both {colour} {shape}s"
        else:
            expr = f"all {colour} {shape}s"
        return render(objs, size, rng), list(range(k)), expr


def write_grefcoco(
    out: str | Path,
    n: int,
    seed: int,
    split: str = "val",
    dataset: str = "grefcoco",
    size: int = 64,
    layout: str = "grefcoco",
    kinds: dict[str, float] | None = None,
    make=None,
) -> Path:
    """``n`` generalized scenes under ``out/<dataset>/``: in gRefCOCO's released layout
    (``grefs(unc).json``: ``ann_id`` a list, ``[-1]`` + ``no_target`` for none) or, with
    ``layout="refer"``, the same refs pickled as the refer API's ``refs(unc).p``; + ``instances.json``,
    images in ``images/``; each sentence carries its ``type`` (single / multi / none). ``make(rng,
    kind, size)`` → (scene, target indices, expression) draws the scenes, of ``kinds`` (kind →
    weight): by default this world's ``generalized_example``; another generator (``eval.shapes_b``)
    passes its own and shares only this writer."""
    if layout not in ("grefcoco", "refer"):
        raise ValueError(f"unknown layout {layout!r}; choose grefcoco or refer")
    folder, images, anns, made = _write_scenes(
        out, dataset, n, seed, split, size, kinds or GENERALIZED_WEIGHTS, make or generalized_example
    )
    refs = []
    for i, kind, (scene, targets, expr), name, image_id in made:
        refs.append(
            {
                "ref_id": i,
                "image_id": image_id,
                "file_name": name,
                "split": split,
                "category_id": 1,
                "no_target": not targets,
                "ann_id": [image_id * 10 + t for t in targets] or [-1],
                "sentences": [
                    {"sent_id": i, "sent": expr, "raw": expr, "tokens": expr.split(), "type": kind, "ref_id": i}
                ],
                "sent_ids": [i],
            }
        )
    if layout == "refer":
        with open(folder / "refs(unc).p", "wb") as f:
            pickle.dump(refs, f)
    else:
        (folder / "grefs(unc).json").write_text(json.dumps(refs))
    (folder / "instances.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": k + 1, "name": s} for k, s in enumerate(SHAPES)],
            }
        )
    )
    return folder
