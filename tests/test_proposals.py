"""Instance proposals chosen by the sentence's map: the head phrase, the region proposer (real
scikit-image), the choice on constructed maps, the shipped demo model choosing region proposals,
and SAM 3's concept proposals through a tiny random ``Sam3VideoModel`` folder (structure only)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from grounding.config import GroundingConfig, ProposalsConfig, UnsupportedOption
from grounding.readout.phrases import head_phrase, singular
from grounding.segment.proposals import Proposal, RegionProposer, choose, map_scores, merge_similar, point_in

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "shapes-demo"

PHRASES = {
    "the dog on the left of the bench": "dog",
    "both red cups": "red cup",
    "the leftmost large green triangle": "large green triangle",
    "man in a red shirt": "man",
    "the man who is holding a cup": "man",
    "the circle that is red": "red circle",
    "shapes that are red": "red shape",
    "the two largest boxes": "box",
    "3 red circles": "red circle",
    "all the people": "person",
    "the knives on the table": "knife",
    "berries": "berry",
    "a blue triangle at the top": "blue triangle",
    "left dog": "dog",
    "the second car from the left": "car",
    "guy in black": "guy",
    "the glass": "glass",
    "the bus near the tree": "bus",
    "red": "red",
    "the small yellow square below the blue circle": "small yellow square",
    "woman with the umbrella": "woman",
    "the front bus": "bus",
    "zebra farthest right": "zebra",
}


@pytest.mark.parametrize("expression,phrase", PHRASES.items())
def test_head_phrase_is_the_noun_phrase_sam3_reads(expression, phrase):
    assert head_phrase(expression) == phrase


def test_head_phrase_edges_and_singulars():
    assert head_phrase("the of and") is None
    assert [singular(w) for w in ("boxes", "cups", "children", "bus", "glass", "ladies", "wolves")] == [
        "box",
        "cup",
        "child",
        "bus",
        "glass",
        "lady",
        "wolf",
    ]


def _draw(im: Image.Image, shapes) -> list[np.ndarray]:
    """Draw ``(kind, xy, colour)`` shapes (``ImageDraw`` method names) on ``im``; their true masks."""
    masks = []
    for kind, xy, colour in shapes:
        getattr(ImageDraw.Draw(im), kind)(xy, fill=colour)
        m = Image.new("L", im.size)
        getattr(ImageDraw.Draw(m), kind)(xy, fill=255)
        masks.append(np.asarray(m) > 0)
    return masks


def _scene(size=(160, 120), seed=0):
    """Three solid shapes on a vertical gradient with sensor noise, and their true masks."""
    w, h = size
    rng = np.random.RandomState(seed)
    bg = np.linspace(200, 245, h)[:, None, None] * np.ones((1, w, 3))
    im = Image.fromarray(np.clip(bg + rng.normal(0, 2.0, bg.shape), 0, 255).astype(np.uint8))
    specs = [
        ("ellipse", [10, 10, 50, 50], (210, 40, 40)),
        ("rectangle", [90, 20, 140, 60], (40, 60, 200)),
        ("polygon", [(40, 110), (70, 65), (100, 110)], (40, 160, 60)),
    ]
    masks = _draw(im, specs)
    return np.asarray(im), masks


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_region_proposer_recovers_each_object_and_not_the_background():
    image, masks = _scene()
    found = RegionProposer()(image, None, ProposalsConfig())
    for m in masks:
        best = max(_iou(p.mask, m) for p in found)
        assert best >= 0.97, best
    # the background is never proposed whole; a piece of it that surrounds the circle is, filled
    # (the circle and a ring: IoU 0.92 with the circle, beside the circle's own proposal)
    assert len(found) <= len(masks) + 1 and all(p.mask.mean() <= 0.5 for p in found)
    assert all(p.mask.shape == image.shape[:2] and 0.2 < p.score <= 1.0 for p in found)
    again = RegionProposer()(image, None, ProposalsConfig())
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(found, again))  # deterministic


def test_region_proposer_works_on_a_bounded_copy_of_a_large_image():
    image, masks = _scene()
    big = np.asarray(Image.fromarray(image).resize((1600, 1200), Image.NEAREST))
    found = RegionProposer()(big, None, ProposalsConfig())
    assert all(p.mask.shape == (1200, 1600) and p.mask.mean() <= 0.5 for p in found)
    for m in masks:
        up = np.asarray(Image.fromarray(m).resize((1600, 1200), Image.NEAREST))
        assert max(_iou(p.mask, up) for p in found) >= 0.9  # found at 512 px, edges scaled back up
    flat = np.full((50, 70, 3), 128, np.uint8)
    assert RegionProposer()(flat, None, ProposalsConfig()) == []  # one region, the whole image


def test_merge_is_scikit_images_rag_cut_on_a_real_photo():
    """``merge_similar`` makes the partition skimage's ``cut_threshold(rag_mean_color)`` makes."""
    from skimage import graph
    from skimage.segmentation import felzenszwalb

    photo = np.asarray(Image.open(ROOT / "examples" / "hopper.jpg").convert("RGB"))
    labels = felzenszwalb(photo, scale=100, sigma=0.5, min_size=20, channel_axis=-1)
    for threshold in (10.0, 20.0, 40.0):
        ours = merge_similar(labels, photo, threshold)
        theirs = graph.cut_threshold(labels, graph.rag_mean_color(photo, labels), threshold)
        pairs = set(zip(ours.ravel().tolist(), theirs.ravel().tolist()))
        assert len(pairs) == len(np.unique(ours)) == len(np.unique(theirs)) < len(np.unique(labels))


def test_choice_by_mean_and_peak_relative_to_the_other_proposals():
    h = np.zeros((40, 40), np.float32)
    small, big, far = (np.zeros((40, 40), bool) for _ in range(3))
    small[5:10, 5:10] = True
    big[15:35, 15:35] = True
    far[0:4, 30:40] = True
    h[5:10, 5:10] = 1.0  # the map lights the small object
    h[15:35, 15:35] = 0.3  # and grazes the big one, with more mass in all
    props = [Proposal(big, 0.9), Proposal(small, 0.5), Proposal(far, 0.7)]
    assert h[big].sum() > h[small].sum()
    scores = map_scores(h, [p.mask for p in props])
    assert scores[1] == 1.0 and scores[0] == pytest.approx(0.09) and scores[2] == 0.0
    assert choose(h, props, 1, 0.6, 0.5) == [(1, 1.0)]
    assert choose(h, props, 5, 0.05, 0.5) == [(1, 1.0), (0, pytest.approx(0.09))]  # "far" has no map at all
    assert choose(h, props, 5, 0.6, 0.5) == [(1, 1.0)]  # the grazed one is under min_relative
    dup = [Proposal(small, 0.5), Proposal(small.copy(), 0.4)]
    assert choose(h, dup, 5, 0.0, 0.5) == [(0, 1.0)]  # overlapping masks suppressed
    agree = np.zeros((40, 40))
    agree[15:35, 15:35] = 1.0
    assert choose(h, props, 5, 0.05, 0.5, agree, 0.5) == [(0, 1.0)]  # the words agree on the big one only
    assert choose(np.zeros((40, 40)), props, 1, 0.6, 0.5) == [] and choose(h, [], 1, 0.6, 0.5) == []
    assert point_in(h, small) == (5.5, 5.5)


def test_config_and_options():
    cfg = GroundingConfig().replace(proposals="regions")
    assert cfg.proposals.mode == "regions"
    with pytest.raises(ValueError, match="proposals.mode"):
        GroundingConfig().replace(proposals="sam")
    with pytest.raises(ValueError, match="min_area"):
        GroundingConfig().replace(proposals__min_area=0.6)
    from grounding.serving.schema import ENDPOINT_OPTIONS, RequestError, option_for, parse_options

    assert "proposals" in ENDPOINT_OPTIONS["segment"] and option_for("proposals.mode") == "proposals"
    assert parse_options({"proposals": "concept"}, "segment").overrides() == {"proposals.mode": "concept"}
    with pytest.raises(RequestError) as e:
        parse_options({"proposals": "boxes"}, "segment")
    assert e.value.field == "proposals"


def _demo():
    from grounding import Grounder

    if not (DEMO / "model_index.json").is_file():
        pytest.skip("the shipped demo model is absent")
    return Grounder.from_pretrained(DEMO, device="cpu")


def _drawn(shapes, size=64):
    im = Image.new("RGB", (size, size), (235, 235, 235))
    return im, _draw(im, shapes)


def test_demo_model_chooses_region_proposals_and_their_masks_are_the_objects():
    """The shipped model (its attention grounds) with region proposals: the chosen masks are the
    drawn objects pixel for pixel; several for a plural; the point is the map's peak inside."""
    g = _demo()
    im, (left, right, square) = _drawn(
        [
            ("ellipse", [6, 22, 22, 38], (220, 30, 30)),
            ("ellipse", [42, 22, 58, 38], (220, 30, 30)),
            ("rectangle", [26, 48, 38, 60], (30, 40, 220)),
        ]
    )
    r = g.segment(im, "the blue square", proposals="regions")
    assert r.segmenter == "regions" and r.present and np.array_equal(r.mask, square)
    (inst,) = r.instances
    assert inst.score == 1.0 and 0.0 < inst.proposal_score <= 1.0 and "proposals" in r.timings_ms
    x, y = r.points[0]
    assert square[int(y), int(x)] and r.point_labels.tolist() == [1]
    both = g.segment(im, "the red circles", proposals="regions", instances="all")
    assert sorted(i.box for i in both.instances) == sorted([(6.0, 22.0, 23.0, 39.0), (42.0, 22.0, 59.0, 39.0)])
    assert np.array_equal(both.mask, left | right) and len(both.points) == 2
    doc = both.to_json()
    assert all(i["proposal_score"] is not None for i in doc["instances"])
    again = g.segment(im, "the blue square", proposals="regions")
    assert np.array_equal(again.mask, r.mask) and again.score == r.score  # deterministic
    plain = g.segment(im, "the blue square")
    assert plain.instances[0].proposal_score is None and plain.to_json()["instances"][0]["proposal_score"] is None


def test_demo_model_regions_on_held_out_scenes_and_fallback():
    """20 scenes of the shapes generator (seed 77, never calibrated on): region proposals choose
    as well as map prompts point (same map) and give whole-object masks; a blank image has no
    proposal, so the result falls back to map prompts and says so."""
    from eval.shapes import referring_scene

    g = _demo()
    rng = np.random.RandomState(77)
    hits, ious = [], []
    for i in range(20):
        scene, target, expr = referring_scene(rng, ("attribute", "size", "position", "relation")[i % 4])
        r = g.segment(scene.image, expr, proposals="regions")
        gt = scene.masks[target]
        x, y = r.points[0]
        hits.append(bool(gt[int(y), int(x)]))
        ious.append(_iou(r.mask, gt))
    assert np.mean(hits) >= 0.75 and np.mean(ious) >= 0.75, (np.mean(hits), np.mean(ious))
    assert np.mean([v for v, h in zip(ious, hits) if h]) >= 0.95  # chosen right → the object's own mask
    blank = Image.new("RGB", (64, 64), (235, 235, 235))
    r = g.segment(blank, "the red circle", proposals="regions")
    assert r.segmenter == "map-threshold" and any("no instance" in w for w in r.warnings)


def test_concept_needs_sam3_and_video_refuses_proposals(flux_grounder, scene_image):
    with pytest.raises(UnsupportedOption) as e:
        flux_grounder.segment(scene_image, "red circle", proposals="concept")
    assert e.value.option == "proposals.mode" and "SAM 3" in str(e.value)
    assert flux_grounder.mask_stage.proposal_modes() == ["none", "regions"]
    with pytest.raises(UnsupportedOption, match="images"):
        flux_grounder.segment_video([scene_image] * 2, "red circle", proposals="regions")


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    from synthetic.segmenters import save_tiny_segmenter

    return save_tiny_segmenter(tmp_path_factory.mktemp("sam3") / "sam3", "sam3")


def test_sam3_concept_proposals_through_the_whole_path(tiny_flux_dir, sam3_folder, scene_image):
    """A tiny random SAM 3 saved as released (``sam3_video``): the tracker segments map prompts
    with every weight loaded, the detector proposes instances of the head phrase (random weights:
    structure, not quality) sharing the tracker's backbone, the vision features are cached per
    image; nothing above the score threshold falls back to map prompts."""
    import transformers

    from grounding import Grounder

    g = Grounder.from_pretrained(tiny_flux_dir, segmenter=str(sam3_folder), device="cpu")
    seg = g.segmenter
    assert seg.name == "sam3-tracker" and g.mask_stage.proposal_modes() == ["none", "regions", "concept"]
    video = transformers.Sam3TrackerVideoModel.from_pretrained(str(sam3_folder))
    decoder = seg.model.mask_decoder.state_dict()
    assert all(np.array_equal(decoder[k], v) for k, v in video.mask_decoder.state_dict().items())
    r = g.segment(scene_image, "the two red circles on the left", proposals="concept", proposals__min_score=0.0)
    assert r.segmenter == "sam3-concept" and r.mask.shape == scene_image.size[::-1]
    assert len(r.instances) == (1 if r.present else 0) and r.mask.any()
    concept = seg.concept_proposer()
    assert concept.model.vision_encoder.backbone is seg.model.vision_encoder.backbone
    key = concept._key
    everything = g.segment(scene_image, "all circles", proposals="concept", proposals__min_score=0.0, instances="all")
    assert concept._key == key  # same image: the backbone ran once
    for inst in everything.instances:
        assert inst.mask.shape == r.mask.shape and 0.0 <= inst.proposal_score <= 1.0 and inst.score <= 1.0
    none = g.segment(scene_image, "red circle", proposals="concept", proposals__min_score=1.0)
    assert none.segmenter == "sam3-tracker" and any("'red circle'" in w for w in none.warnings)


def test_sam3_detector_alone_is_refused_by_name(tmp_path):
    from synthetic.segmenters import build_tiny_sam3

    model, processor = build_tiny_sam3()
    model.detector_model.save_pretrained(tmp_path / "det")
    from grounding.segment.segmenters import make_segmenter

    with pytest.raises(ValueError, match="detector alone"):
        make_segmenter(str(tmp_path / "det"))


def test_cli_segment_with_proposals(tmp_path, sam3_folder):
    from grounding.cli import main

    image = ROOT / "examples" / "shapes-1.png"
    out = tmp_path / "regions"
    assert (
        main(
            ["segment", str(image), "the red circle", "--model", str(DEMO), "--proposals", "regions", "--out", str(out)]
        )
        == 0
    )
    doc = __import__("json").loads((out / "result.json").read_text())
    assert doc["segmenter"] == "regions" and (out / "mask.png").is_file()
    out = tmp_path / "concept"
    args = ["segment", str(image), "red circle", "--model", str(DEMO), "--segmenter", str(sam3_folder)]
    args += ["--proposals", "concept", "--set", "proposals.min_score=0.0", "--out", str(out)]
    assert main(args) == 0
    assert __import__("json").loads((out / "result.json").read_text())["segmenter"] == "sam3-concept"
    assert (
        main(["segment", str(image), "red circle", "--model", str(DEMO), "--proposals", "concept", "--out", str(out)])
        == 2
    )
