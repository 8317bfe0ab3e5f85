"""Metrics against hand-computed values."""

import numpy as np
import pytest

from eval import metrics


def band(rows_left: int, rows_right: int, h: int = 10, w: int = 20) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[:rows_left, : w // 2] = True
    m[:rows_right, w // 2 :] = True
    return m


def test_iou_and_running_image_scores():
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True
    pred = np.zeros((4, 4), bool)
    pred[:2, 1:3] = True
    assert metrics.intersection_union(pred, gt) == (2, 6)
    assert metrics.iou(pred, gt) == pytest.approx(1 / 3)
    s = metrics.ImageScores()
    s.add(2, 4, pointing=True)
    s.add(0, 5, pointing=False)  # an empty prediction: IoU 0, still counted
    out = s.summary()
    assert out["n"] == 2 and out["miou"] == pytest.approx(0.25) and out["oiou"] == pytest.approx(2 / 9)
    assert out["prec@0.5"] == 0.5 and out["prec@0.6"] == 0.0 and out["pointing"] == 0.5
    with pytest.raises(ValueError):
        metrics.iou(pred, gt[:3])


def test_pointing_hit():
    gt = np.zeros((5, 5), bool)
    gt[1, 3] = True
    heat = np.zeros((5, 5))
    heat[1, 3] = 1.0
    assert metrics.pointing_hit(heat, gt)
    heat[4, 4] = 2.0
    assert not metrics.pointing_hit(heat, gt)


def test_region_similarity():
    gt, pred = band(5, 5), band(6, 7)
    assert metrics.region_similarity(pred, gt) == pytest.approx(100 / 130)
    empty = np.zeros_like(gt)
    assert metrics.region_similarity(empty, empty) == 1.0  # empty union → 1
    assert metrics.region_similarity(empty, gt) == 0.0
    void = np.zeros_like(gt)
    void[5:] = True  # the extra rows are void
    assert metrics.region_similarity(pred, gt, void) == 1.0


def test_boundary_map_of_a_band():
    b = metrics.boundary_map(band(5, 5))
    assert b.sum() == 20 and b[4].all()


def test_contour_accuracy():
    gt = band(5, 5)  # boundary: row 4; 10×20 image → tolerance ceil(0.008 · 22.4) = 1 px
    assert metrics.contour_accuracy(gt, gt) == 1.0
    assert metrics.contour_accuracy(band(6, 6), gt) == 1.0  # 1 px off: within tolerance
    assert metrics.contour_accuracy(band(7, 7), gt) == 0.0  # 2 px off: outside it
    assert metrics.contour_accuracy(band(7, 7), gt, bound_th=2) == 1.0
    # left half 1 px off, right half 2 px off: precision 10/21, recall 10/20 → F = 20/41
    assert metrics.contour_accuracy(band(6, 7), gt) == pytest.approx(20 / 41)
    empty = np.zeros_like(gt)
    assert metrics.contour_accuracy(empty, empty) == 1.0
    assert metrics.contour_accuracy(empty, gt) == 0.0
    assert metrics.contour_accuracy(gt, empty) == 0.0
    void = np.zeros_like(gt)
    void[4:] = True
    assert metrics.contour_accuracy(band(7, 7), gt, void) == 1.0


def test_statistics_and_video_scores():
    mean, recall, decay = metrics.statistics([1, 1, 0, 0])
    assert (mean, recall, decay) == (0.5, 0.5, 1.0)
    gt = [band(5, 5)] * 4
    preds = [np.zeros((10, 20), bool), band(5, 5), band(6, 7), np.zeros((10, 20), bool)]
    s = metrics.video_scores(preds, gt)  # first and last frame left out
    assert s["frames"] == 2
    assert s["J"] == pytest.approx((1 + 100 / 130) / 2) and s["F"] == pytest.approx((1 + 20 / 41) / 2)
    assert s["J&F"] == pytest.approx((s["J"] + s["F"]) / 2)
    all_frames = metrics.video_scores(preds, gt, drop_first_last=False)
    assert all_frames["frames"] == 4 and all_frames["J"] < s["J"]
