"""Several instances, or none, for one expression (instances="all"): constructed maps first, then
through the Grounder on the tiny model and the shipped demo model."""

import numpy as np
import pytest

from conftest import scene
from grounding.config import ConfigError, GroundingConfig
from grounding.pipeline.stages import MaskStage
from grounding.segment.instances import map_regions, requested_count, suppress
from grounding.segment.segmenters import MapSegmenter


def _peaks(h, w, *centres, sigma=3.0):
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), np.float32)
    for cy, cx, a in centres:
        m = np.maximum(m, a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)))
    return m / m.max()


def _instances(heat, expression="the circles", **kw):
    cfg = GroundingConfig().replace(instances="all").replace(**{f"instances__{k}": v for k, v in kw.items()})
    return MaskStage.all_instances(np.zeros((*heat.shape, 3), np.uint8), heat, expression, MapSegmenter(), cfg)


def test_two_separated_peaks_are_two_instances_one_is_one():
    two = _instances(_peaks(48, 64, (24, 14, 1.0), (24, 48, 0.9)))
    assert len(two) == 2 and two[0].score >= two[1].score
    assert two[0].box[0] < 32 <= two[1].box[0]  # the stronger peak (left) first
    assert not np.logical_and(two[0].mask, two[1].mask).any()
    one = _instances(_peaks(48, 64, (24, 30, 1.0)))
    assert len(one) == 1


def test_weak_regions_and_counts():
    heat = _peaks(48, 64, (12, 12, 1.0), (12, 50, 0.9), (38, 30, 0.3))
    assert len(_instances(heat)) == 2  # the 0.3 peak is under min_relative_peak 0.6 (below threshold too)
    assert len(_instances(heat, min_relative_peak=0.0, min_area=0.0)) == 2  # 0.3 < threshold 0.5: no region
    heat3 = _peaks(48, 64, (12, 12, 1.0), (12, 50, 0.95), (38, 30, 0.9))
    assert len(_instances(heat3)) == 3
    assert len(_instances(heat3, expression="the two circles")) == 2  # the expression's count caps it
    assert len(_instances(heat3, expression="the circle", max_instances=1)) == 1


def test_requested_count_reads_numbers_and_quantifiers():
    assert requested_count("the two dogs") == 2 and requested_count("both squares") == 2
    assert requested_count("3 red circles") == 3 and requested_count("the three cars on the left") == 3
    assert requested_count("all red objects") is None and requested_count("the red circle") is None
    assert requested_count("every circle") is None


def test_regions_and_suppression_helpers():
    heat = _peaks(40, 40, (10, 10, 1.0), (30, 30, 0.8))
    regions = map_regions(heat, 0.5, 0.6, 0.0)
    assert len(regions) == 2 and regions[0][10, 10] and regions[1][30, 30]
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = a.copy()
    b[5] = True  # IoU 5/6 with a
    c = np.zeros((10, 10), bool)
    c[8:] = True
    assert suppress([a, b, c], [0.9, 0.8, 0.7], 0.5) == [0, 2]
    assert map_regions(np.zeros((5, 5)), 0.5, 0.6, 0.0) == []


def test_config_is_checked():
    assert GroundingConfig().replace(instances="all").instances.mode == "all"
    with pytest.raises(ConfigError, match="instances.mode"):
        GroundingConfig().replace(instances="some")
    with pytest.raises(ConfigError, match="max_instances"):
        GroundingConfig().replace(instances__max_instances=0)


def test_grounder_one_mode_keeps_todays_result_and_reports_it_as_one_instance(flux_grounder, scene_image):
    one = flux_grounder.segment(scene_image, "the red circle")
    assert len(one.instances) == (1 if one.mask.any() else 0)
    if one.instances:
        assert np.array_equal(one.instances[0].mask, one.mask) and one.instances[0].box == one.box
    doc = one.to_json()
    assert len(doc["instances"]) == len(one.instances)


def test_grounder_all_mode_returns_instances_whose_union_is_the_mask(flux_grounder, scene_image):
    r = flux_grounder.segment(scene_image, "all shapes", instances="all", instances__min_relative_peak=0.0,
                              instances__min_area=0.0)
    assert r.instances or not r.present
    if r.instances:
        union = np.logical_or.reduce([i.mask for i in r.instances])
        assert np.array_equal(union, r.mask) and r.box == r.instances[0].box
        assert [i.score for i in r.instances] == sorted((i.score for i in r.instances), reverse=True)
    doc = r.to_json()
    assert len(doc["instances"]) == len(r.instances) and all("segmentation" in i for i in doc["instances"])


def test_demo_model_finds_both_circles_in_a_two_circle_scene():
    """The shipped demo model (its attention really grounds): two red circles → two instances."""
    from pathlib import Path

    from PIL import Image, ImageDraw

    from grounding import Grounder

    demo = Path(__file__).resolve().parents[1] / "models" / "shapes-demo"
    if not (demo / "model_index.json").is_file():
        pytest.skip("the shipped demo model is absent")
    g = Grounder.from_pretrained(demo, device="cpu")
    im = Image.new("RGB", (64, 64), (235, 235, 235))
    d = ImageDraw.Draw(im)
    d.ellipse([6, 22, 22, 38], fill=(220, 30, 30))
    d.ellipse([42, 22, 58, 38], fill=(220, 30, 30))
    d.rectangle([26, 50, 38, 62], fill=(30, 40, 220))
    r = g.segment(im, "red circle", instances="all")
    boxes = sorted(i.box for i in r.instances)
    assert len(r.instances) == 2, [i.box for i in r.instances]
    assert boxes[0][2] <= 32 <= boxes[1][0]  # one on each side, each its own circle
    for (x0, y0, x1, y1), (cx, cy) in zip(boxes, [(14, 30), (50, 30)]):
        assert x0 <= cx < x1 and y0 <= cy < y1 and (x1 - x0) <= 24
    assert g.segment(im, "blue square", instances="all").instances[0].box[1] >= 48  # the square alone
