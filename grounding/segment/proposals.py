"""Instance proposals chosen by the sentence's map.

Map prompting reads a few points and a box off the referent map and lets a segmenter draw one
mask there: right about *which* object when the map is, but the mask is only as good as a few
prompts, and several instances need a prompt set each. Proposals turn it around: a proposer finds
the instances — SAM 3 every instance of the expression's head phrase (``sam3_concept``), or, when
no SAM 3 is given, graph-based image regions (``RegionProposer``) — and the map only *chooses*
among them. SAM 3 alone ignores places, relations and counts ("the dog on the left", sam3 #461);
the map reads the whole sentence. One DiT pass chooses, the proposer supplies the masks.

Choice (``map_scores``): a proposal's map score is the heatmap's mean inside it times its peak
inside it, each relative to the best proposal's. The mean keeps a large object that the map's
tail grazes from winning on mass; the peak keeps a small region that sits wholly under a broad
map from winning on mean. On the shapes calibration set (300 scenes, region proposals) this
product chose the referent 0.860 of the time; mean, peak, mass and mixtures of them, on the
refined or the plain upsampled map, 0.810–0.863 (docs/shapes-demo.md). No score read off the map
did much better: where the map is wrong, its mass is on the wrong object.
Shapes: heatmap ``[H, W]`` in [0, 1], masks bool ``[H, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

from ..config import ProposalsConfig
from .prompts import mask_iou

# The region proposer works on the image resized to this long side at most (graph segmentation is
# O(pixels); object-sized regions do not need more) and scales its masks back up.
WORK_SIDE = 512
# Felzenszwalb's threshold ``scale / |C|`` favours components of a pixel count; ``ProposalsConfig.scale``
# is given per this many pixels (64²) and grown with the image, so a region's *share* of the image
# decides, as ``min_area`` / ``max_area`` do, and an image and its upsampled copy split alike.
SCALE_PIXELS = 64 * 64


@dataclass(frozen=True)
class Proposal:
    """One instance a proposer found: its mask and the proposer's own confidence in [0, 1]."""

    mask: np.ndarray  # bool [H, W]
    score: float


class Proposer(Protocol):
    """Image (+ the head phrase) → instance proposals at the image's size."""

    name: str

    def __call__(self, image: np.ndarray, phrase: str | None, cfg: ProposalsConfig) -> list[Proposal]: ...


class RegionProposer:
    """Training-free proposals: scikit-image's graph-based segmentation (Felzenszwalb and
    Huttenlocher 2004), adjacent segments of similar mean colour merged (a region adjacency graph
    cut at ``cfg.merge``), holes filled (an outlined object is one region with its inside; a
    background piece around an object also becomes one, beside the object's own), and the regions
    of object size (``cfg.min_area`` …
    ``cfg.max_area`` of the image) kept. The phrase is not read: the map does all the choosing.
    A region's score is its colour contrast with a ring around it (Euclidean RGB distance of the
    means / the largest possible, so 1 = black on white)."""

    name = "regions"

    def __call__(self, image: np.ndarray, phrase: str | None, cfg: ProposalsConfig) -> list[Proposal]:
        from skimage.segmentation import felzenszwalb

        h, w = image.shape[:2]
        work = _fit(image, WORK_SIDE)
        wh, ww = work.shape[:2]
        labels = felzenszwalb(
            work,
            scale=cfg.scale * wh * ww / SCALE_PIXELS,
            sigma=cfg.sigma,
            min_size=max(4, int(cfg.min_area * wh * ww)),
            channel_axis=-1,
        )
        if labels.max() > 0 and cfg.merge > 0:
            labels = merge_similar(labels, work, cfg.merge)
        ring = np.ones((5, 5), dtype=bool)
        pixels = float(wh * ww)
        out = []
        # Each segment is filled and ringed inside its own box (2 px margin, clipped to the image):
        # the same result as on the whole image — what lies outside a region's box is one piece
        # reaching the border, never a hole — at the cost of the box, not of the image.
        for k, box in enumerate(ndimage.find_objects(labels + 1)):
            if box is None or (labels[box] == k).sum() > cfg.max_area * pixels:  # filling only grows
                continue
            ys = slice(max(box[0].start - 2, 0), min(box[0].stop + 2, wh))
            xs = slice(max(box[1].start - 2, 0), min(box[1].stop + 2, ww))
            region = ndimage.binary_fill_holes(labels[ys, xs] == k)
            if not cfg.min_area <= region.sum() / pixels <= cfg.max_area:
                continue
            around = ndimage.binary_dilation(region, ring) & ~region
            crop = work[ys, xs]
            contrast = (
                float(np.linalg.norm(crop[region].mean(0) - crop[around].mean(0)) / (255.0 * np.sqrt(3)))
                if around.any()
                else 0.0
            )
            full = np.zeros((wh, ww), dtype=bool)
            full[ys, xs] = region
            mask = full if (wh, ww) == (h, w) else _resize_mask(full, (w, h))
            if mask.any():
                out.append(Proposal(mask, min(1.0, contrast)))
        return out


def merge_similar(labels: np.ndarray, image: np.ndarray, threshold: float) -> np.ndarray:
    """Segments ``labels`` (int ``[H, W]``) with adjacent ones whose mean colours are closer than
    ``threshold`` (Euclidean RGB) joined — the cut of a region adjacency graph weighted by mean
    colour difference that scikit-image's ``graph.cut_threshold(rag_mean_color(...))`` makes,
    with the graph built from array ops (skimage builds it pixel by pixel: ≈ 0.3 s for 256²
    pixels against a few ms here) and its components from scipy. Returns labels ``0..K-1``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, flat = np.unique(labels, return_inverse=True)
    flat = flat.reshape(labels.shape)
    n = int(flat.max()) + 1
    rgb = image.reshape(-1, image.shape[-1]).astype(np.float64)
    counts = np.bincount(flat.ravel(), minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(flat.ravel(), rgb[:, c], minlength=n) for c in range(rgb.shape[1])], 1)
    means = sums / counts[:, None]
    neighbours = [  # 8-connected, as skimage's graph: right, down, and both diagonals
        (flat[:, :-1], flat[:, 1:]),
        (flat[:-1], flat[1:]),
        (flat[:-1, :-1], flat[1:, 1:]),
        (flat[:-1, 1:], flat[1:, :-1]),
    ]
    keys = np.concatenate([(a.ravel().astype(np.int64) * n + b.ravel()) for a, b in neighbours])
    keys = np.unique(keys)  # each adjacent pair once (as one int64 key: unique on rows is slow)
    pairs = np.stack([keys // n, keys % n], 1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    close = pairs[np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1) < threshold]
    graph = coo_matrix((np.ones(len(close)), (close[:, 0], close[:, 1])), shape=(n, n))
    _, joined = connected_components(graph, directed=False)
    return np.asarray(joined[flat])


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` resized (area filter) so its long side is at most ``side``."""
    rgb = np.asarray(image)[..., :3]
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    s = side / max(h, w)
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX))


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask at ``size`` (width, height), nearest neighbour."""
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))


def map_scores(heatmap: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """``[P]`` in [0, 1]: each mask's (mean × peak of the heatmap inside it), the means and peaks
    each divided by the best proposal's (so the best mean and the best peak would score 1); 0 for
    an empty mask or a map that is zero everywhere inside every mask."""
    if not masks:
        return np.zeros(0)
    mean = np.array([float(heatmap[m].mean()) if m.any() else 0.0 for m in masks])
    peak = np.array([float(heatmap[m].max()) if m.any() else 0.0 for m in masks])
    if mean.max() <= 0 or peak.max() <= 0:
        return np.zeros(len(masks))
    return (mean / mean.max()) * (peak / peak.max())


def choose(
    heatmap: np.ndarray,
    proposals: list[Proposal],
    limit: int,
    min_relative: float,
    nms_iou: float,
    agree: np.ndarray | None = None,
    agree_threshold: float = 0.0,
) -> list[tuple[int, float]]:
    """The proposals the map means, best first, as (index, map score relative to the best):
    the best-scoring one, then — when ``limit`` > 1 — every other whose score is at least
    ``min_relative`` of the best's, overlapping ones suppressed (mask IoU > ``nms_iou``), at most
    ``limit``. With ``agree`` (``[H, W]`` word agreement, ``presence.rule="agreement"``) a
    proposal counts only where the expression's words agree on it (peak ≥ ``agree_threshold``)."""
    scores = map_scores(heatmap, [p.mask for p in proposals])
    cands = [i for i in range(len(proposals)) if scores[i] > 0]
    if agree is not None:
        cands = [i for i in cands if float(agree[proposals[i].mask].max()) >= agree_threshold]
    if not cands:
        return []
    best = max(scores[i] for i in cands)
    cands = sorted(cands, key=lambda i: (-scores[i], -proposals[i].score, i))
    kept: list[int] = []
    for i in cands:
        if len(kept) >= limit or (kept and scores[i] < min_relative * best):
            break
        if all(mask_iou(proposals[i].mask, proposals[j].mask) <= nms_iou for j in kept):
            kept.append(i)
    return [(i, float(scores[i] / best)) for i in kept]


def point_in(heatmap: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel centre of the heatmap's maximum inside ``mask`` (first in raster order on
    ties): where the grounder points once it has chosen a proposal."""
    y, x = np.unravel_index(int(np.argmax(np.where(mask, heatmap, -np.inf))), heatmap.shape)
    return float(x) + 0.5, float(y) + 0.5
