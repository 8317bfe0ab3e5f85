"""The community's metrics.

Image referring segmentation (RefCOCO family): per-sentence IoU, mIoU (mean of per-sentence IoU),
oIoU (Σ intersection / Σ union), precision at IoU 0.5–0.9, pointing accuracy. An empty prediction
is IoU 0 and is counted; no sample is ever skipped.

Generalized referring (gRefCOCO; multi-, single- and no-target expressions): gIoU, cIoU, N-acc,
T-acc as the ReLA authors' ``gres_model/evaluation/refer_evaluation.py`` computes them.

Video (DAVIS definitions, as davisvideochallenge/davis2017-evaluation computes them): J is the
Jaccard index with void pixels left out and an empty union scoring 1; F is the boundary
F-measure with a tolerance of ``ceil(bound_th × image diagonal)`` pixels, boundaries dilated with
a disk; per object, M = mean over frames, R = fraction of frames above 0.5, D = decay (first
quarter mean − last quarter mean); J&F = (mean J + mean F) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

PREC_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


# --- image -------------------------------------------------------------------------------------
def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two masks; 0 when both are empty (nothing predicted for nothing is not a hit here)."""
    i, u = intersection_union(pred, gt)
    return i / u if u else 0.0


def pointing_hit(heatmap: np.ndarray, gt: np.ndarray, point: tuple[float, float] | None = None) -> bool:
    """Does the grounder point inside the GT mask? ``point`` (x, y) in pixels when given — the
    result's first positive prompt point (``pointed``): the map's peak for map prompts, the map's
    peak inside the chosen proposal for proposals — else the heatmap's maximum (first in raster
    order on ties)."""
    if point is None:
        y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    else:
        h, w = heatmap.shape
        x, y = min(max(int(point[0]), 0), w - 1), min(max(int(point[1]), 0), h - 1)
    return bool(np.asarray(gt, bool)[y, x])


def pointed(result) -> tuple[float, float] | None:
    """A ``GroundingResult``'s first positive point (x, y), or None when it has none."""
    pos = [tuple(map(float, p)) for p, lab in zip(result.points, result.point_labels) if lab == 1]
    return pos[0] if pos else None  # type: ignore[return-value]


@dataclass
class ImageScores:
    """Running image-referring metrics; add one sample at a time (or merge shards)."""

    n: int = 0
    iou_sum: float = 0.0
    inter: int = 0
    union: int = 0
    prec_hits: dict[float, int] = field(default_factory=lambda: {t: 0 for t in PREC_THRESHOLDS})
    pointing_hits: int = 0
    pointing_n: int = 0

    def add(self, intersection: int, union: int, pointing: bool | None = None) -> None:
        s = intersection / union if union else 0.0
        self.n += 1
        self.iou_sum += s
        self.inter += intersection
        self.union += union
        for t in self.prec_hits:
            self.prec_hits[t] += s >= t
        if pointing is not None:
            self.pointing_n += 1
            self.pointing_hits += bool(pointing)

    def summary(self) -> dict[str, float]:
        out = {
            "n": self.n,
            "miou": self.iou_sum / self.n if self.n else 0.0,
            "oiou": self.inter / self.union if self.union else 0.0,
        }
        for t, hits in self.prec_hits.items():
            out[f"prec@{t}"] = hits / self.n if self.n else 0.0
        if self.pointing_n:
            out["pointing"] = self.pointing_hits / self.pointing_n
        return out


# --- generalized referring (gRefCOCO) -----------------------------------------------------------
GREF_PREC_THRESHOLDS = (0.7, 0.8, 0.9)


def gref_sample(pred: np.ndarray, gt: np.ndarray, no_target: bool) -> tuple[int, int, float]:
    """(I, U, IoU) of one gRefCOCO sample as the ReLA authors' evaluator counts them (their
    ``refer_evaluation.py``, with "predicted no-target" = an empty prediction): a no-target sample
    predicted empty scores IoU 1 and adds nothing to ΣI / ΣU; predicted non-empty it scores 0 and
    adds its predicted pixels to ΣU; a target sample is ordinary I / U (0 when predicted empty)."""
    i, u = intersection_union(pred, gt)
    empty = not np.asarray(pred, bool).any()
    if no_target:
        return (0, 0, 1.0) if empty else (0, u, 0.0)
    return i, u, (i / u if u else 0.0)


@dataclass
class GeneralizedScores:
    """Running gRefCOCO metrics: gIoU = mean per-sample IoU over all samples (no-target ones
    scored by ``gref_sample``), cIoU = ΣI / ΣU, N-acc = no-target samples predicted empty / all
    no-target samples, T-acc = target samples predicted non-empty / all target samples, and
    precision at 0.7 / 0.8 / 0.9 over the target samples (the thresholds ReLA reports)."""

    n: int = 0
    iou_sum: float = 0.0
    inter: int = 0
    union: int = 0
    nt_tp: int = 0  # no-target, predicted empty
    nt_fn: int = 0  # no-target, predicted something
    t_tn: int = 0  # target, predicted something
    t_fp: int = 0  # target, predicted empty
    prec_hits: dict[float, int] = field(default_factory=lambda: {t: 0 for t in GREF_PREC_THRESHOLDS})

    def add(self, inter: int, union: int, iou_value: float, no_target: bool, pred_empty: bool) -> None:
        self.n += 1
        self.iou_sum += iou_value
        self.inter += inter
        self.union += union
        if no_target:
            self.nt_tp += pred_empty
            self.nt_fn += not pred_empty
            return
        self.t_fp += pred_empty
        self.t_tn += not pred_empty
        for t in self.prec_hits:
            self.prec_hits[t] += iou_value >= t

    def summary(self) -> dict[str, float]:
        targets, no_targets = self.t_tn + self.t_fp, self.nt_tp + self.nt_fn
        out = {
            "n": self.n,
            "n_target": targets,
            "n_no_target": no_targets,
            "giou": self.iou_sum / self.n if self.n else 0.0,
            "ciou": self.inter / self.union if self.union else 0.0,
            "n_acc": self.nt_tp / no_targets if no_targets else 0.0,
            "t_acc": self.t_tn / targets if targets else 0.0,
        }
        for t, hits in self.prec_hits.items():
            out[f"prec@{t}"] = hits / targets if targets else 0.0
        return out


# --- video (DAVIS) -----------------------------------------------------------------------------
def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: Jaccard index of one frame, void pixels excluded; an empty union gives 1."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    keep = np.ones_like(gt) if void is None else ~np.asarray(void, bool)
    inter = np.sum(pred & gt & keep)
    union = np.sum((pred | gt) & keep)
    return 1.0 if union == 0 else float(inter / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundaries of a binary mask, offset half a pixel toward the origin (seg2bmap)."""
    seg = np.asarray(mask, bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: float) -> np.ndarray:
    """Disk structuring element: x² + y² ≤ r² on a (2r+1)² grid."""
    r = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(r, r)
    return x**2 + y**2 <= radius**2


def contour_accuracy(
    pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008
) -> float:
    """F: boundary F-measure of one frame; tolerance ``bound_th`` × diagonal (or pixels if ≥ 1)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    keep = np.ones_like(gt) if void is None else ~np.asarray(void, bool)
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    fg = boundary_map(pred & keep)
    gtb = boundary_map(gt & keep)
    selem = disk(bound_pix)
    fg_dil = ndimage.binary_dilation(fg, structure=selem) if fg.any() else fg
    gt_dil = ndimage.binary_dilation(gtb, structure=selem) if gtb.any() else gtb
    n_fg, n_gt = int(fg.sum()), int(gtb.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(fg & gt_dil) / n_fg
        recall = np.sum(gtb & fg_dil) / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def statistics(per_frame: list[float] | np.ndarray, n_bins: int = 4) -> tuple[float, float, float]:
    """(mean, recall = fraction > 0.5, decay = first-quarter mean − last-quarter mean)."""
    x = np.asarray(per_frame, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.nanmean(x))
    recall = float(np.nanmean(x > 0.5))
    ids = np.round(np.linspace(1, len(x), n_bins + 1) + 1e-10) - 1
    bins = [x[int(ids[i]) : int(ids[i + 1]) + 1] for i in range(n_bins)]
    with np.errstate(all="ignore"):
        means = [np.nanmean(b) if len(b) else np.nan for b in bins]
    return mean, recall, float(means[0] - means[-1])


def video_scores(
    preds: list[np.ndarray],
    gts: list[np.ndarray],
    voids: list[np.ndarray | None] | None = None,
    drop_first_last: bool = True,
) -> dict[str, float]:
    """J and F of one object over its frames (the DAVIS semi-supervised protocol drops the first
    and last frame); returns J/F mean, recall, decay and J&F."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted frames for {len(gts)} ground-truth frames")
    idx = list(range(len(gts)))
    if drop_first_last and len(idx) > 2:
        idx = idx[1:-1]
    voids = voids or [None] * len(gts)
    j = [region_similarity(preds[i], gts[i], voids[i]) for i in idx]
    f = [contour_accuracy(preds[i], gts[i], voids[i]) for i in idx]
    jm, jr, jd = statistics(j)
    fm, fr, fd = statistics(f)
    return {
        "J": jm,
        "J_recall": jr,
        "J_decay": jd,
        "F": fm,
        "F_recall": fr,
        "F_decay": fd,
        "J&F": (jm + fm) / 2,
        "frames": len(idx),
    }
