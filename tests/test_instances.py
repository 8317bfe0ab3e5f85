"""Several instances, or none, for one expression (instances="all"): constructed maps first, then
through the Grounder on the tiny model and the shipped demo model."""

import numpy as np
import pytest

from grounding.config import ConfigError, GroundingConfig
from grounding.pipeline.stages import MaskStage
from grounding.readout.phrases import is_plural, requested_count
from grounding.segment.instances import Instance, map_regions, suppress
from grounding.segment.prompts import box_of, prompts_from_map
from grounding.segment.segmenters import MapSegmenter


def _peaks(h, w, *centres, sigma=3.0):
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), np.float32)
    for cy, cx, a in centres:
        m = np.maximum(m, a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    return m / m.max()


def _instances(heat, expression="the circles", segmenter=None, agree=None, **kw):
    """``MaskStage.all_instances`` as the mask stage calls it: the single-referent result first."""
    cfg = GroundingConfig().replace(instances="all").replace(**{f"instances__{k}": v for k, v in kw.items()})
    segmenter = segmenter or MapSegmenter()
    image = np.zeros((*heat.shape, 3), np.uint8)
    seg = segmenter(image, heat, prompts_from_map(heat, cfg.threshold, cfg.positive_points))
    return MaskStage.all_instances(
        image, heat, expression, segmenter, cfg, Instance(seg.mask, box_of(seg.mask), float(heat.max())), agree
    )


def test_two_separated_peaks_are_two_instances_one_is_one():
    two = _instances(_peaks(48, 64, (24, 14, 1.0), (24, 48, 0.9)))
    assert len(two) == 2 and two[0].score >= two[1].score
    assert two[0].box[0] < 32 <= two[1].box[0]  # the stronger peak (left) first
    assert not np.logical_and(two[0].mask, two[1].mask).any()
    one = _instances(_peaks(48, 64, (24, 30, 1.0)))
    assert len(one) == 1
    from grounding.segment.segmenters import Segmentation

    def plain(image, heat, prompts, **_):  # a bare callable segmenter (no batched segment_many)
        return Segmentation(prompts.region.copy(), None)

    again = _instances(_peaks(48, 64, (24, 14, 1.0), (24, 48, 0.9)), segmenter=plain)
    assert [i.box for i in again] == [i.box for i in two]


def test_weak_regions_and_counts():
    heat = _peaks(48, 64, (12, 12, 1.0), (12, 50, 0.9), (38, 30, 0.3))
    assert len(_instances(heat)) == 2  # the 0.3 peak is under min_relative_peak 0.6 (below threshold too)
    assert len(_instances(heat, min_relative_peak=0.0, min_area=0.0)) == 2  # 0.3 < threshold 0.5: no region
    heat3 = _peaks(48, 64, (12, 12, 1.0), (12, 50, 0.95), (38, 30, 0.9))
    assert len(_instances(heat3)) == 3
    assert len(_instances(heat3, expression="the two circles")) == 2  # the expression's count caps it
    assert len(_instances(heat3, expression="the circles", max_instances=1)) == 1
    assert len(_instances(heat3, expression="the circle")) == 1  # a singular referent: the best alone
    assert len(_instances(heat3, expression="the circle and the square")) == 3  # joined phrases


def test_the_best_instance_is_the_single_referent_result_and_sam_calls_are_batched():
    """In "all" mode the peak's region is segmented once (the single-referent result is the first
    instance) and the other regions in one batched SAM call, equal to one call per region."""
    import torch

    from grounding.segment.instances import region_prompts
    from grounding.segment.segmenters import SamSegmenter, build_sam_tiny

    heat = _peaks(48, 64, (12, 12, 1.0), (12, 50, 0.95), (38, 30, 0.9))
    torch.manual_seed(0)
    sam = SamSegmenter(build_sam_tiny())
    calls = []
    inner = sam.predictor.predict_torch

    def counted(*a, **k):
        calls.append(a[0].shape[0])
        return inner(*a, **k)

    sam.predictor.predict_torch = counted
    found = _instances(heat, segmenter=sam, nms_iou=1.0)
    assert calls == [1, 2]  # the single-referent call, then both other regions in one batch
    image = np.zeros((*heat.shape, 3), np.uint8)
    regions = map_regions(heat, 0.5, 0.6, 0.002)[1:]
    alone = [sam(image, heat, region_prompts(heat, r, 0.5)) for r in regions]
    many = sam.segment_many(image, heat, [region_prompts(heat, r, 0.5) for r in regions])
    for a, b in zip(alone, many):
        assert np.array_equal(a.mask, b.mask) and abs(a.predicted_iou - b.predicted_iou) < 1e-5
    assert found and found[0].score == 1.0  # the single-referent result (peak 1) leads
    assert all(f.mask.any() for f in found)


def test_word_agreement_decides_which_regions_count():
    # "the red shapes": the map lights three shapes; the words agree on two of them (the red ones)
    heat3 = _peaks(48, 64, (12, 12, 1.0), (12, 50, 0.95), (38, 30, 0.9))
    agree = _peaks(48, 64, (12, 12, 0.9), (38, 30, 0.7), (12, 50, 0.2))
    found = _instances(heat3, expression="the red shapes", agree=agree)
    assert len(found) == 2 and found[1].box[1] > 24  # the best, and the lower region (not the right one)
    assert len(_instances(heat3, expression="the red shapes", agree=np.zeros_like(heat3))) == 1  # the best stays


def test_requested_count_reads_numbers_and_quantifiers():
    assert requested_count("the two dogs") == 2 and requested_count("both squares") == 2
    assert requested_count("3 red circles") == 3 and requested_count("the three cars on the left") == 3
    assert requested_count("all red objects") is None and requested_count("every circle") is None
    assert requested_count("the red circle") == 1 and requested_count("the glass on the left") == 1
    assert requested_count("the red circles") is None and requested_count("the people") is None
    assert requested_count("the man on the left and the woman") is None  # two phrases
    assert requested_count("the circle between the square and the star") == 1
    assert is_plural("boxes") and not is_plural("bus") and not is_plural("glass")


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
    r = flux_grounder.segment(
        scene_image, "all shapes", instances="all", instances__min_relative_peak=0.0, instances__min_area=0.0
    )
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
    assert len(g.segment(im, "the red circle", instances="all").instances) == 1  # singular: the best one
    r = g.segment(im, "the red circles", instances="all")
    boxes = sorted(i.box for i in r.instances)
    assert len(r.instances) == 2, [i.box for i in r.instances]
    assert boxes[0][2] <= 32 <= boxes[1][0]  # one on each side, each its own circle
    for (x0, y0, x1, y1), (cx, cy) in zip(boxes, [(14, 30), (50, 30)]):
        assert x0 <= cx < x1 and y0 <= cy < y1 and (x1 - x0) <= 24
    assert g.segment(im, "blue square", instances="all").instances[0].box[1] >= 48  # the square alone
