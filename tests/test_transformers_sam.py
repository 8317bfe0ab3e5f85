"""SAM 2 and SAM 3's tracker through transformers (``grounding.segment.transformers_sam``), on tiny
random models of the real classes saved as folders (``synthetic.segmenters``): chosen by
``make_segmenter`` from the folder's config, the segmenter contract (3 candidates per prompt set at
image size, predicted IoU, low-res logits), points and boxes, batched prompt sets equal to one at a
time, a low-res mask prompt taken back, determinism, and the whole Grounder / CLI path.
Random weights: the masks mean nothing; the structure is what is checked.
"""

import json

import numpy as np
import pytest

from fixtures import scene
from grounding.segment.segmenters import make_segmenter
from grounding.segment.transformers_sam import TransformersSamSegmenter
from synthetic.segmenters import FAMILIES

NAMES = {"sam2": "sam2", "sam3_tracker": "sam3-tracker", "edgetam": "edgetam"}


@pytest.fixture(scope="module")
def folders(sam_folders):
    return sam_folders


@pytest.mark.parametrize("family", FAMILIES)
def test_contract_points_boxes_and_batches(folders, family):
    seg = make_segmenter(str(folders[family]))
    assert isinstance(seg, TransformersSamSegmenter) and seg.name == NAMES[family]
    rng = np.random.RandomState(3)
    img = (rng.rand(60, 80, 3) * 255).astype(np.uint8)
    seg.set_image(img)
    pts = (rng.rand(3, 2, 2) * [80, 60]).astype(np.float32)
    labels = np.array([[1, 0], [1, 1], [1, 0]], np.int32)
    boxes = np.array([[5, 5, 40, 30], [30, 10, 79, 59], [0, 0, 20, 20]], np.float32)
    masks, iou, low = seg.predict_many(pts, labels, boxes)
    assert masks.shape == (3, 3, 60, 80) and masks.dtype == bool and iou.shape == (3, 3)
    assert low.shape[:2] == (3, 3) and low.shape[2] == low.shape[3] == 32
    for b in range(3):  # batched = one at a time
        m, i, lo = seg.predict(pts[b], labels[b], boxes[b])
        assert (m == masks[b]).mean() >= 0.999 and np.abs(i - iou[b]).max() <= 1e-4
        assert np.abs(lo - low[b]).max() <= 1e-3
    # points alone, logits, and the previous frame's low-res mask taken back as a prompt
    m, i, lo = seg.predict(pts[0], labels[0], None, return_logits=True)
    assert m.shape == (3, 60, 80) and m.dtype == np.float32 and i.shape == (3,)
    m2, _, lo2 = seg.predict(pts[0], labels[0], None, mask_input=lo[:1])
    assert m2.shape == (3, 60, 80) and not np.allclose(lo2, lo)
    # deterministic, and the embedding is cached per image
    again = make_segmenter(str(folders[family]))
    again.set_image(img)
    assert np.array_equal(again.predict_many(pts, labels, boxes)[0], masks)


@pytest.mark.parametrize("family", FAMILIES)
def test_grounder_segments_with_it(folders, family, tiny_flux_dir):
    from grounding import Grounder

    g = Grounder.from_pretrained(tiny_flux_dir, segmenter=str(folders[family]), device="cpu")
    im = scene(80, 60)
    r = g.segment(im, "the red circle")
    assert r.segmenter == NAMES[family] and r.mask.shape == (60, 80) and r.mask.dtype == bool
    assert 0.0 <= r.score <= 1.0
    rs = g.segment(im, "the red circle", instances="all")  # batched prompt sets for instances
    assert rs.mask.shape == (60, 80)


def test_cli_segment_with_a_transformers_segmenter(folders, tiny_flux_dir, tmp_path):
    """``python -m grounding segment --segmenter FOLDER``, run in process (test_cli's subprocess
    case already checks that ``python -m grounding`` itself starts)."""
    from grounding.cli import main

    scene(80, 60).save(tmp_path / "img.png")
    out = tmp_path / "out"
    args = ["segment", "--model", tiny_flux_dir, "--segmenter", folders["sam2"], tmp_path / "img.png"]
    assert main([str(a) for a in args] + ["the red circle", "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["segmenter"] == "sam2" and (out / "mask.png").is_file()


def test_not_a_segmenter_folder_is_a_clear_error(tmp_path, tiny_flux_dir):
    with pytest.raises(ValueError, match="not a segmenter folder"):
        make_segmenter(str(tmp_path))
    with pytest.raises(ValueError, match="not a segmenter folder"):
        make_segmenter(str(tiny_flux_dir))  # a DiT pipeline folder: no config.json of a SAM model


@pytest.mark.slow  # a second real server (≈ 17 s): run by make test-slow and .ci/run
def test_the_service_segments_with_it(folders, tiny_flux_dir, tmp_path):
    """The real ``bentoml serve`` with ``GROUNDING_SEGMENTER`` = a SAM 2 folder: /info names it,
    /segment answers with its masks (REST; gRPC runs the same engine) and a video job with
    ``propagate`` runs on its video model."""
    import time

    import httpx

    from conftest import Server
    from fixtures import encode, video_bytes

    srv = Server(tiny_flux_dir, tmp_path / "srv", GROUNDING_SEGMENTER=str(folders["sam2"]))
    try:
        info = httpx.post(srv.url + "/info", json={}, timeout=30).json()
        assert info["segmenter"] == "sam2"
        r = httpx.post(
            srv.url + "/segment",
            files={"image": ("a.png", encode(scene(80, 60)), "image/png")},
            data={"expression": "red circle", "instances": "all"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        assert res["segmentation"]["size"] == [60, 80] and 0.0 <= res["score"] <= 1.0
        # a video job with propagate: maps at keyframes, the SAM 2 video model between them
        task = httpx.post(
            srv.url + "/segment_video/submit",
            files={"video": ("v.mp4", video_bytes(tmp_path, 5), "video/mp4")},
            data={"expression": "red circle", "propagate": "true", "keyframe_every": "3"},
            timeout=60,
        ).json()["task_id"]
        deadline = time.time() + 120
        while httpx.get(srv.url + "/segment_video/status", params={"task_id": task}).json()["status"] == "in_progress":
            assert time.time() < deadline
            time.sleep(0.2)
        doc = httpx.get(srv.url + "/segment_video/get", params={"task_id": task}).json()
        assert len(doc["frames"]) == 5 and doc["frames"][0]["dit"], doc
        assert {f["source"] for f in doc["frames"]} <= {"map", "tracked", "search"}
    finally:
        srv.stop()
