"""SAM 2-family → ONNX (``exporters.sam2``, ``grounding.segment.onnx_sam2``) on tiny random models
of the real transformers classes: parity with the torch segmenter for each family (points, boxes,
a mask prompt, batched prompt sets), the manifest and its checks, the optimizer's verification
(which catches a real mis-fusion of SAM's channel-first layer norm), int8 through the CLI, and the
Grounder choosing the runtime from the folder. Random weights give tiny logits around zero, so
logit parity is judged on their scale."""

import json
import shutil

import numpy as np
import pytest

from fixtures import scene
from synthetic.segmenters import FAMILIES


@pytest.fixture(scope="module")
def exports(sam_folders, tmp_path_factory):
    """Each family's tiny folder exported (fp32; SAM 2's through the optimizer)."""
    from exporters.sam2 import export_sam2
    from grounding.segment.transformers_sam import TransformersSamSegmenter

    root = tmp_path_factory.mktemp("onnx-sam2")
    out = {}
    for family in FAMILIES:  # the optimizer's pass once (it fuses nothing more in the others)
        seg = TransformersSamSegmenter.from_pretrained(sam_folders[family])
        export_sam2(seg.model, seg.processor, root / family, optimize=family == "sam2", source=str(sam_folders[family]))
        out[family] = root / family
    return out


def _pair(sam_folders, exports, family):
    from grounding.segment.onnx_sam2 import OnnxSam2Segmenter
    from grounding.segment.transformers_sam import TransformersSamSegmenter

    return (
        TransformersSamSegmenter.from_pretrained(sam_folders[family]),
        OnnxSam2Segmenter(exports[family], providers=["CPUExecutionProvider"]),
    )


def _close(a: np.ndarray, b: np.ndarray, rel: float = 1e-4) -> bool:
    return float(np.abs(a - b).max()) <= rel * float(np.abs(a).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_with_torch(sam_folders, exports, family):
    torch_seg, onnx_seg = _pair(sam_folders, exports, family)
    assert onnx_seg.name == f"{torch_seg.name}-onnx:CPUExecutionProvider"
    rng = np.random.RandomState(7)
    for h, w in ((60, 80), (150, 100)):
        img = (rng.rand(h, w, 3) * 255).astype(np.uint8)
        torch_seg.set_image(img)
        onnx_seg.set_image(img)
        for n in (1, 3):
            pts = (rng.rand(n, 2) * [w, h]).astype(np.float32)
            labels = (np.arange(n) % 3 != 2).astype(np.int32)
            for box in (None, np.array([0.2 * w, 0.1 * h, 0.7 * w, 0.9 * h], np.float32)):
                a, ia, la = torch_seg.predict(pts, labels, box, return_logits=True)
                b, ib, lb = onnx_seg.predict(pts, labels, box, return_logits=True)
                assert a.shape == b.shape == (3, h, w) and lb.shape == la.shape
                assert _close(la, lb) and _close(a, b) and np.abs(ia - ib).max() <= 1e-5
                # the previous frame's low-res mask as a prompt: it changes the answer, alike in both
                a2, _, la2 = torch_seg.predict(pts, labels, box, return_logits=True, mask_input=la[:1])
                b2, _, lb2 = onnx_seg.predict(pts, labels, box, return_logits=True, mask_input=la[:1])
                assert _close(la2, lb2) and not np.allclose(la2, la)
        # several instances' prompt sets in one decoder run = the torch model's objects axis
        pts = (rng.rand(3, 2, 2) * [w, h]).astype(np.float32)
        labels = np.array([[1, 0], [1, 1], [1, 0]], np.int32)
        boxes = np.array([[5, 5, 40, 30], [30, 10, 79, 59], [0, 0, 20, 20]], np.float32)
        ma, ia, la = torch_seg.predict_many(pts, labels, boxes)
        mb, ib, lb = onnx_seg.predict_many(pts, labels, boxes)
        assert mb.shape == (3, 3, h, w) and mb.dtype == bool and _close(la, lb) and (ma == mb).mean() >= 0.999


def test_manifest_and_its_checks(sam_folders, exports, tmp_path):
    from grounding.segment.manifest import FORMAT_SAM2, validate
    from grounding.segment.onnx_sam2 import OnnxSam2Segmenter
    from grounding.segment.segmenters import OnnxSamSegmenter, make_segmenter

    folder = exports["sam2"]
    m = validate(folder)
    assert m["format"] == FORMAT_SAM2 and m["model_type"] == "sam2_video" and m["family"] == "sam2"
    assert m["precision"] == "fp32" and m["image_size"] == 128 and m["low_res_size"] == [32, 32]
    assert {"encoder.onnx", "decoder.onnx"} <= set(m["files"]) and len(m["files"]) > 2  # + the processor's
    assert all(d <= 1e-4 for d in m["relative_diff_to_torch"].values())
    assert m["optimized"]["encoder"]["relative_diff"] <= 1e-4
    import onnx

    dec = onnx.load(str(folder / "decoder.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in dec.graph.input}
    assert dims["point_coords"][:2] == ["prompts", "num_points"]
    # the folder picks the runtime; the wrong runtime for a format says so
    assert isinstance(make_segmenter(str(folder)), OnnxSam2Segmenter)
    with pytest.raises(ValueError, match="sam2-onnx"):
        OnnxSamSegmenter(folder)
    bad = shutil.copytree(folder, tmp_path / "tampered")
    processor_file = next(f for f in m["files"] if not f.endswith(".onnx"))
    (bad / processor_file).write_text((bad / processor_file).read_text().replace("128", "256"))
    with pytest.raises(ValueError, match="bytes|SHA-256"):
        OnnxSam2Segmenter(bad)


def test_optimizer_is_verified_against_the_original(sam_tiny_path, tmp_path):
    """The transformer optimizer's layer-norm fusion misreads segment-anything's channel-first
    LayerNorm2d: the check refuses the rewritten graph; the SAM export leaves that fusion out."""
    from exporters.onnx_graphs import optimize_graph
    from exporters.sam import export_sam
    from grounding.segment.segmenters import load_sam

    m = export_sam(load_sam(sam_tiny_path), tmp_path / "sam", "tiny", optimize=True)
    assert m["optimized"]["disabled"] == ["layer_norm"] and m["optimized"]["relative_diff"] <= 1e-4
    plain = tmp_path / "plain"
    export_sam(load_sam(sam_tiny_path), plain, "tiny")
    before = (plain / "encoder.onnx").read_bytes()
    probe = {"image": np.random.RandomState(0).randn(1, 3, 1024, 1024).astype(np.float32)}
    with pytest.raises(ValueError, match="changed encoder.onnx's outputs"):
        optimize_graph(plain / "encoder.onnx", "sam2", probe)
    assert (plain / "encoder.onnx").read_bytes() == before  # the original stays


def test_int8_through_the_cli(sam_folders, tmp_path, capsys):
    """``python -m exporters sam2`` (its ``main``, in process: the subprocess path is test_onnx's)."""
    from exporters.cli import main

    out = tmp_path / "int8"
    args = ["sam2", "--model", str(sam_folders["sam3_tracker"]), "--out", str(out), "--quantize", "int8"]
    assert main(args) == 0  # optimized, then quantized
    m = json.loads((out / "manifest.json").read_text())
    assert m["precision"] == "int8" and m["family"] == "sam3-tracker"
    assert set(m["relative_diff_to_torch"]) == {"encoder", "decoder"}  # measured, not asserted
    from grounding.segment.onnx_sam2 import OnnxSam2Segmenter

    seg = OnnxSam2Segmenter(out)
    seg.set_image(np.asarray(scene(80, 60)))
    masks, iou, low = seg.predict(np.array([[20.0, 30.0]]), np.array([1]), None)
    assert masks.shape == (3, 60, 80) and masks.dtype == bool and low.shape == (3, 32, 32)
    capsys.readouterr()
    assert main(["sam2", "--model", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err


def test_grounder_with_the_onnx_sam2_segmenter(sam_folders, exports, tiny_flux_dir):
    from grounding import Grounder

    im = scene(80, 60)
    a = Grounder.from_pretrained(tiny_flux_dir, segmenter=str(exports["sam2"]), device="cpu").segment(im, "the disc")
    b = Grounder.from_pretrained(tiny_flux_dir, segmenter=str(sam_folders["sam2"]), device="cpu").segment(
        im, "the disc"
    )
    assert a.segmenter == "sam2-onnx:CPUExecutionProvider" and b.segmenter == "sam2"
    assert (a.mask == b.mask).mean() >= 0.999 and a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.slow
def test_the_onnx_bench_runs_small():
    """``bench/sam_onnx.py --small`` runs the benchmark's code end to end on tiny models (≈ 30 s), so
    it cannot rot: every variant timed and its fidelity measured; fp32 exact, int8 measured."""
    from fixtures import run_bench

    doc = run_bench("bench/sam_onnx.py", "--small", "--reps", "1", timeout=600)
    assert doc["bench"] == "sam_onnx" and doc["small"] is True
    for model in ("vit_b", "sam2"):
        row = doc[model]
        assert row["logit_rel_diff_fp32"] <= 1e-4 and row["mask_iou_fp32"] >= 0.999
        assert 0 < row["logit_rel_diff_int8"] and 0 < row["mask_iou_int8"] <= 1
        assert row["encoder_ort_over_torch"] > 0 and row["encoder_int8_over_torch"] > 0
