"""Several instances for one expression: the referent map's separate high regions, each its own
prompts, and non-maximum suppression over their masks (how many an expression asks for is
``readout.phrases.requested_count``). Pure helpers; ``MaskStage`` runs them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .prompts import Prompts, _spread, box_of, mask_iou


@dataclass(frozen=True)
class Instance:
    mask: np.ndarray  # bool [H, W]
    box: tuple[float, float, float, float]  # xyxy, x1/y1 exclusive
    # The map's score for it relative to the best instance's (1 for the best): its region's map
    # peak (map prompts), or its proposal's map score (``proposals.map_scores``).
    score: float
    # The proposer's own confidence (SAM 3's instance score, a region's contrast); None for
    # instances segmented from map prompts.
    proposal_score: float | None = None


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
