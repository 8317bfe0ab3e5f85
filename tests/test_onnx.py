"""SAM → ONNX: parity with the torch path at several image sizes, manifest checks, the runtime
segmenter inside the Grounder."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from exporters.sam import validate
from fixtures import run_module, scene
from grounding.segment.segmenters import OnnxSamSegmenter, SamSegmenter, load_sam

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(1024, 1024), (480, 640), (1500, 2250), (720, 405)]


@pytest.fixture(scope="module")
def onnx_dir(sam_tiny_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "sam_tiny"
    run_module("exporters", "sam", "--checkpoint", sam_tiny_path, "--out", out)
    return out


def test_manifest(onnx_dir):
    m = validate(onnx_dir)
    assert m["model_type"] == "tiny" and m["opset"] == 17 and m["precision"] == "fp32"
    assert set(m["files"]) == {"encoder.onnx", "decoder.onnx"}
    assert m["graphs"]["decoder"]["outputs"] == ["low_res_masks", "iou_predictions"]
    import onnx

    dec = onnx.load(str(onnx_dir / "decoder.onnx"))
    names = [i.name for i in dec.graph.input]
    assert "orig_im_size" not in names  # nothing about the image size is baked into the graph
    dims = dec.graph.input[names.index("point_coords")].type.tensor_type.shape.dim
    assert dims[1].dim_param == "num_points"


@pytest.mark.parametrize("h,w", SIZES)
def test_parity_with_torch(onnx_dir, sam_tiny_path, h, w):
    torch_seg = SamSegmenter(load_sam(sam_tiny_path))
    onnx_seg = OnnxSamSegmenter(onnx_dir, providers=["CPUExecutionProvider"])
    rng = np.random.RandomState(h + w)
    img = (rng.rand(h, w, 3) * 255).astype(np.uint8)
    torch_seg.set_image(img)
    onnx_seg.set_image(img)
    for n in range(1, 6):
        pts = (rng.rand(n, 2) * [w, h]).astype(np.float32)
        labels = (np.arange(n) % 3 != 2).astype(np.int32)
        for box in (None, np.array([0.2 * w, 0.1 * h, 0.7 * w, 0.9 * h], dtype=np.float32)):
            a, ia, la = torch_seg.predict(pts, labels, box, return_logits=True)
            b, ib, lb = onnx_seg.predict(pts, labels, box, return_logits=True)
            assert a.shape == b.shape == (3, h, w)
            assert np.abs(la - lb).max() <= 1e-4 and np.abs(a - b).max() <= 1e-4
            assert ((a > 0) == (b > 0)).mean() >= 0.999
            assert np.abs(ia - ib).max() <= 1e-4


def test_batched_prompt_sets_match_one_at_a_time(onnx_dir, sam_tiny_path):
    """Several instances' prompt sets in one decoder run (the export's prompt axis) and in one
    ``predict_torch`` call equal decoding each set alone, in ONNX and in torch."""
    assert validate(onnx_dir)["prompt_batch"] is True
    rng = np.random.RandomState(3)
    img = (rng.rand(300, 400, 3) * 255).astype(np.uint8)
    pts = (rng.rand(3, 2, 2) * [400, 300]).astype(np.float32)
    labels = np.ones((3, 2), np.int32)
    boxes = np.array([[10, 20, 200, 150], [150, 40, 390, 290], [0, 0, 100, 100]], np.float32)
    for seg in (SamSegmenter(load_sam(sam_tiny_path)), OnnxSamSegmenter(onnx_dir, providers=["CPUExecutionProvider"])):
        seg.set_image(img)
        masks, iou, low = seg.predict_many(pts, labels, boxes)
        assert masks.shape == (3, 3, 300, 400) and iou.shape == (3, 3)
        for b in range(3):
            m, i, lo = seg.predict(pts[b], labels[b], boxes[b])
            assert (m == masks[b]).mean() >= 0.999 and np.abs(i - iou[b]).max() <= 1e-4
            assert np.abs(lo - low[b]).max() <= 1e-3


def _broken_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_exports_are_clear_errors(onnx_dir, tmp_path):
    d = _broken_copy(onnx_dir, tmp_path / "truncated")
    data = (d / "decoder.onnx").read_bytes()
    (d / "decoder.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        OnnxSamSegmenter(d)
    d = _broken_copy(onnx_dir, tmp_path / "swapped")
    enc = (d / "encoder.onnx").read_bytes()
    (d / "encoder.onnx").write_bytes(enc[:-1] + bytes([enc[-1] ^ 1]))
    with pytest.raises(ValueError, match="SHA-256"):
        OnnxSamSegmenter(d)
    d = _broken_copy(onnx_dir, tmp_path / "nomanifest")
    (d / "manifest.json").unlink()
    with pytest.raises(ValueError, match="manifest"):
        OnnxSamSegmenter(d)
    d = _broken_copy(onnx_dir, tmp_path / "missing")
    (d / "encoder.onnx").unlink()
    with pytest.raises(ValueError, match="missing"):
        OnnxSamSegmenter(d)
    d = _broken_copy(onnx_dir, tmp_path / "badjson")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        OnnxSamSegmenter(d)


def test_int8_export_runs(sam_tiny_path, tmp_path):
    out = tmp_path / "int8"
    run_module("exporters", "sam", "--checkpoint", sam_tiny_path, "--out", out, "--quantize", "int8")
    assert json.loads((out / "manifest.json").read_text())["precision"] == "int8"
    seg = OnnxSamSegmenter(out)
    img = np.asarray(scene(80, 60))
    seg.set_image(img)
    masks, iou, low = seg.predict(np.array([[20.0, 30.0]]), np.array([1]), None)
    assert masks.shape == (3, 60, 80) and masks.dtype == bool and low.shape == (3, 256, 256)


def test_grounder_with_onnx_segmenter(tiny_flux_dir, onnx_dir, sam_tiny_path, scene_image):
    from grounding import Grounder

    g_onnx = Grounder.from_pretrained(tiny_flux_dir, segmenter=str(onnx_dir), device="cpu")
    g_torch = Grounder.from_pretrained(tiny_flux_dir, segmenter=str(sam_tiny_path), device="cpu")
    a = g_onnx.segment(scene_image, "the red circle")
    b = g_torch.segment(scene_image, "the red circle")
    assert a.segmenter == "sam-onnx:CPUExecutionProvider" and b.segmenter == "sam"
    assert "segmenter_CPUExecutionProvider" in a.timings_ms
    assert (a.mask == b.mask).mean() >= 0.999 and a.score == pytest.approx(b.score, abs=1e-4)
