"""Several instances for one expression: the referent map's separate high regions, each its own
prompts, and how many instances an expression asks for. Pure helpers; ``MaskStage`` runs them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..readout.tokens import CONTENT, Word, head_noun, split_words, word_kind
from .prompts import Prompts, _spread, box_of, mask_iou

_NUMBERS = {
    "one": 1,
    "single": 1,
    "two": 2,
    "both": 2,
    "pair": 2,
    "couple": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_ALL = frozenset("all every each any".split())
_IRREGULAR_PLURALS = frozenset("people men women children mice geese feet teeth police cattle".split())


@dataclass(frozen=True)
class Instance:
    mask: np.ndarray  # bool [H, W]
    box: tuple[float, float, float, float]  # xyxy, x1/y1 exclusive
    score: float  # the region's map peak (the best instance's is 1 after normalisation)


def requested_count(expression: str) -> int | None:
    """The number of instances an expression asks for: "the two circles" → 2, "both squares" → 2,
    "3 dogs" → 3, "the red circle" → 1 (a singular head noun); "all red objects", "the circles"
    (a plural head noun), "the cat and the dog" (joined phrases) → None (as many as the map shows)."""
    parsed = [Word(w, s, e, word_kind(w)) for w, s, e in split_words(expression)]
    for word in (w.text.lower() for w in parsed):
        if word.isdigit():
            return max(1, min(int(word), 100))
        if word in _NUMBERS and word != "one":
            return _NUMBERS[word]
        if word in _ALL:
            return None
    head = head_noun(parsed)
    if head is None or is_plural(parsed[head].text) or _joined(parsed):
        return None
    return 1


def is_plural(noun: str) -> bool:
    """English plural by form: "circles", "boxes", "people"; not "glass", "bus", "iris"."""
    n = noun.lower()
    return n in _IRREGULAR_PLURALS or (len(n) > 3 and n.endswith("s") and not n.endswith(("ss", "us", "is")))


def _joined(words: list[Word]) -> bool:
    """Whether "and" / "or" joins two phrases with content words ("the cat and the dog", "man on
    the left and woman on the right": two referents, each singular) — not a "between" anchor pair."""
    for i, w in enumerate(words):
        t = w.text.lower()
        if t == "between":
            return False
        if (
            t in ("and", "or")
            and any(v.kind == CONTENT for v in words[:i])
            and any(v.kind == CONTENT for v in words[i + 1 :])
        ):
            return True
    return False


def map_regions(heatmap: np.ndarray, threshold: float, min_relative_peak: float, min_area: float) -> list[np.ndarray]:
    """Bool ``[H, W]`` regions: 8-connected components of ``heatmap ≥ threshold · max``, best peak
    first, kept when their peak is ≥ ``min_relative_peak`` of the best and they cover ≥ ``min_area``
    of the image (the best one always)."""
    hi = float(heatmap.max())
    if hi <= 0:
        return []
    labels, n = ndimage.label(heatmap >= threshold * hi, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    peaks = ndimage.maximum(heatmap, labels, index=np.arange(1, n + 1))
    areas = ndimage.sum(np.ones_like(heatmap), labels, index=np.arange(1, n + 1))
    order = np.argsort(-peaks, kind="stable")
    keep = [
        k
        for j, k in enumerate(order)
        if j == 0 or (peaks[k] >= min_relative_peak * peaks[order[0]] and areas[k] >= min_area * heatmap.size)
    ]
    return [labels == k + 1 for k in keep]


def region_prompts(heatmap: np.ndarray, region: np.ndarray, threshold: float, positive: int = 1) -> Prompts:
    """Prompts for one region: its highest point(s), its box, the region itself."""
    h, w = heatmap.shape
    pos = _spread(np.where(region, heatmap, -np.inf), positive, 0.1 * float(np.hypot(h, w)))
    pts = np.array(pos, dtype=np.float32).reshape(-1, 2) + 0.5
    return Prompts(pts, np.ones(len(pos), dtype=np.int32), box_of(region), region, threshold)


def suppress(masks: list[np.ndarray], scores: list[float], iou: float) -> list[int]:
    """Greedy non-maximum suppression over masks, best score first: indices kept."""
    kept: list[int] = []
    for i in sorted(range(len(masks)), key=lambda i: -scores[i]):
        if not masks[i].any():
            continue
        if all(mask_iou(masks[i], masks[j]) <= iou for j in kept):
            kept.append(i)
    return kept
