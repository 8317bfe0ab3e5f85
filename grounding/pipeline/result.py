"""What a user gets back: mask, box, score, heatmap, prompts, and their serialisations."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from ..segment.instances import Instance

__all__ = ["GroundingResult", "Instance", "instance_doc", "mask_to_rle", "rle_to_mask", "colorize", "overlay"]


@dataclass
class GroundingResult:
    expression: str
    mask: np.ndarray  # bool [H, W] at the input image's size
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) pixels, x1/y1 exclusive
    score: float  # [0, 1]
    heatmap: np.ndarray  # float32 [H, W] in [0, 1]
    points: np.ndarray  # float32 [K, 2] (x, y) given to the segmenter
    point_labels: np.ndarray  # int32 [K]: 1 positive, 0 negative
    segmenter: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    present: bool = True  # see ``PresenceConfig``
    presence_score: float = 0.0
    features: dict[str, float | None] = field(default_factory=dict)  # presence features
    # ``segment.instances.Instance`` list: one (the mask itself) in ``instances="one"`` mode, zero
    # or more in "all" mode (then ``mask`` is their union and ``box`` the best one's); none at all
    # when ``present`` is False, whatever the mode.
    instances: list[Instance] = field(default_factory=list)

    @property
    def best_guess(self) -> bool:
        """The mask is only a best guess: the model says the referent is not present, yet a mask
        is kept (the RefCOCO protocol scores one). Draw it as a guess, never as a found object."""
        return not self.present and bool(self.mask.any())

    def to_json(self) -> dict:
        """JSON-ready dict; the mask as COCO RLE (``{"size": [h, w], "counts": str}``)."""
        return {
            "expression": self.expression,
            "box": [round(float(v), 2) for v in self.box],
            "box_format": "xyxy",
            "score": round(float(self.score), 6),
            "segmentation": mask_to_rle(self.mask),
            "points": [[round(float(x), 2), round(float(y), 2)] for x, y in self.points],
            "point_labels": [int(v) for v in self.point_labels],
            "present": bool(self.present),
            "presence_score": round(float(self.presence_score), 6),
            "best_guess": self.best_guess,
            "segmenter": self.segmenter,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "warnings": list(self.warnings),
            "instances": [instance_doc(i, mask_to_rle(i.mask)) for i in self.instances],
        }


def instance_doc(instance: Instance, segmentation: dict) -> dict:
    """One instance as JSON: its box (xyxy), the map's score, the proposer's score (null for map
    prompts) and ``segmentation`` (in the caller's format)."""
    return {
        "box": [round(float(v), 2) for v in instance.box],
        "score": round(float(instance.score), 6),
        "proposal_score": None if instance.proposal_score is None else round(float(instance.proposal_score), 6),
        "segmentation": segmentation,
    }


def mask_to_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    r = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(r).astype(bool)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """float [H, W] in [0, 1] → uint8 [H, W, 3], a blue→cyan→yellow→red ramp."""
    stops = np.array([[0, 0, 128], [0, 160, 255], [60, 255, 190], [255, 230, 0], [220, 20, 0]], dtype=np.float32)
    x = np.clip(heatmap, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def overlay(
    image: Image.Image, result: GroundingResult, heat_alpha: float = 0.35, mask_alpha: float = 0.45
) -> Image.Image:
    """The image with the heatmap blended in, the mask tinted, the box and the points drawn. A
    best guess (``result.best_guess``: not present) is drawn as a dashed grey outline of the mask
    with no box and no tint, and the image says "not found"."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base * (1 - heat_alpha) + colorize(result.heatmap).astype(np.float32) * heat_alpha
    if not result.best_guess:
        tint = np.array([30, 255, 60], dtype=np.float32)
        out[result.mask] = out[result.mask] * (1 - mask_alpha) + tint * mask_alpha
    im = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    w = max(1, round(max(im.size) / 300))
    if result.best_guess:
        _dashed_outline(im, result.mask, (200, 200, 200), w)
        draw.text((3, 2), "not found", fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    elif result.mask.any():
        x0, y0, x1, y1 = result.box
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 40, 40), width=w)
    r = 2 * w + 1
    for (x, y), lab in zip(result.points, result.point_labels):
        colour = (255, 255, 0) if lab == 1 else (255, 0, 255)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0))
    return im


def _dashed_outline(im: Image.Image, mask: np.ndarray, colour: tuple[int, int, int], width: int) -> None:
    """The mask's boundary pixels (thickened to ``width``), every other run of 4·width left out."""
    from scipy import ndimage

    edge = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
    yy, xx = np.nonzero(edge)
    keep = ((xx + yy) // (4 * width)) % 2 == 0
    arr = np.asarray(im).copy()
    arr[yy[keep], xx[keep]] = colour
    im.paste(Image.fromarray(arr))
