"""Map → segmenter prompts: peak point(s), optional negative points, a box, the thresholded region."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Prompts:
    points: np.ndarray  # float32 [K, 2] as (x, y) pixel centres
    labels: np.ndarray  # int32 [K]: 1 positive, 0 negative
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), x1/y1 exclusive
    region: np.ndarray  # bool [H, W]: connected part of ``map ≥ threshold·max`` holding the peak
    threshold: float = 0.5


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(x, y) of the map's maximum (first in raster order on ties)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


def region_at_peak(
    heatmap: np.ndarray, threshold: float, prev_mask: np.ndarray | None = None, identity_weight: float = 0.5
) -> np.ndarray:
    """bool [H, W]: an 8-connected component of ``heatmap ≥ threshold·max`` — the one holding the
    peak, or, given the previous frame's mask, the one scoring best on (its map mass / the
    largest mass) + ``identity_weight`` × (IoU with the previous mask), among components with at
    least half the largest mass (the referent's identity is kept by overlap)."""
    hi = float(heatmap.max())
    above = heatmap >= threshold * hi if hi > 0 else np.ones_like(heatmap, dtype=bool)
    labels, n = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    x, y = peak(heatmap)
    best = labels[y, x]
    if prev_mask is not None and prev_mask.any() and n > 1:
        mass = ndimage.sum(heatmap, labels, index=np.arange(1, n + 1))
        top = float(mass.max())

        def score(k: int) -> float:
            """Component ``k``'s map mass relative to the largest, plus ``identity_weight`` × its IoU with the
            previous mask."""
            comp = labels == k
            union = np.logical_or(comp, prev_mask).sum()
            return float(mass[k - 1] / top + identity_weight * (np.logical_and(comp, prev_mask).sum() / union))

        cands = [k for k in range(1, n + 1) if mass[k - 1] >= 0.5 * top or k == best]
        best = max(cands, key=lambda k: (score(k), k == best))
    return np.asarray(labels == best)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks of one shape (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight (x0, y0, x1, y1) box of a bool mask, x1/y1 exclusive; (0, 0, 0, 0) when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def prompts_from_map(
    heatmap: np.ndarray,
    threshold: float = 0.5,
    positive: int = 1,
    negative: int = 0,
    prev_mask: np.ndarray | None = None,
    identity_weight: float = 0.5,
) -> Prompts:
    """Peak-first prompts from a heatmap ``[H, W]`` in [0, 1].

    The region is ``region_at_peak`` (identity-aware given ``prev_mask``). Positives: the region's
    highest point, then its next highest points at least a tenth of the image diagonal away from
    points already taken. Negatives: the lowest points of the map outside the region, spread alike.
    """
    region = region_at_peak(heatmap, threshold, prev_mask, identity_weight)
    h, w = heatmap.shape
    spacing = 0.1 * float(np.hypot(h, w))
    pos = _spread(np.where(region, heatmap, -np.inf), positive, spacing)
    neg = _spread(np.where(region, -np.inf, -heatmap), negative, spacing) if negative else []
    pts = np.array(pos + neg, dtype=np.float32).reshape(-1, 2) + 0.5
    labels = np.array([1] * len(pos) + [0] * len(neg), dtype=np.int32)
    return Prompts(pts, labels, box_of(region), region, threshold)


def _spread(score: np.ndarray, k: int, spacing: float) -> list[tuple[int, int]]:
    """Up to ``k`` (x, y) maxima of ``score``, each ``spacing`` px from those chosen before."""
    chosen: list[tuple[int, int]] = []
    flat = score.ravel()
    m = min(flat.size, 4096)  # candidates: the m best values, best first
    cand = np.argpartition(-flat, m - 1)[:m]
    order = cand[np.lexsort((cand, -flat[cand]))]
    w = score.shape[1]
    for idx in order:
        if len(chosen) >= k or not np.isfinite(score.flat[idx]):
            break
        y, x = divmod(int(idx), w)
        if all(np.hypot(x - cx, y - cy) >= spacing for cx, cy in chosen):
            chosen.append((x, y))
    return chosen
