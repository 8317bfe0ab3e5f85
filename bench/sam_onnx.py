"""Benchmark: SAM torch vs onnxruntime on CPU, encoder and decoder separately.

Random-weight SAM (``--model-type vit_b`` by default; no checkpoint needed) exported with
``exporters.sam``; medians over ``--reps`` runs after a warm-up. Also reports the int8 graphs'
mask IoU against fp32 on a small parity set when ``--int8`` is given. Final JSON line:
``encoder_ort_over_torch``, ``decoder_ort_over_torch`` (time ratios; lower is better).

    python bench/sam_onnx.py [--model-type vit_b] [--reps 5] [--int8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.sam import export_sam  # noqa: E402
from grounding.segment.segmenters import OnnxSamSegmenter, SamSegmenter  # noqa: E402
from timing import median_time  # noqa: E402  (bench/, this script's folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-type", default="vit_b")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--int8", action="store_true")
    args = ap.parse_args()

    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry[args.model_type](checkpoint=None).eval()
    tmp = Path(tempfile.mkdtemp(prefix="sam-onnx-"))
    t = time.perf_counter()
    export_sam(sam, tmp / "fp32", args.model_type)
    export_s = time.perf_counter() - t
    torch_seg = SamSegmenter(sam)
    ort_seg = OnnxSamSegmenter(tmp / "fp32", providers=["CPUExecutionProvider"])
    rng = np.random.RandomState(0)
    img = (rng.rand(480, 640, 3) * 255).astype(np.uint8)
    pts = np.array([[200.0, 150.0], [400.0, 300.0], [100.0, 400.0]], dtype=np.float32)
    labels = np.array([1, 1, 0])
    box = np.array([150, 100, 450, 380], dtype=np.float32)

    enc_torch = median_time(lambda: torch_seg._embed(img), args.reps)
    enc_ort = median_time(lambda: ort_seg._embed(img), args.reps)
    dec_torch = median_time(lambda: torch_seg.predict(pts, labels, box), args.reps * 4)
    dec_ort = median_time(lambda: ort_seg.predict(pts, labels, box), args.reps * 4)
    a, _, la = torch_seg.predict(pts, labels, box, return_logits=True)
    b, _, lb = ort_seg.predict(pts, labels, box, return_logits=True)
    row = {
        "bench": "sam_onnx",
        "model_type": args.model_type,
        "threads": torch.get_num_threads(),
        "encoder_torch_s": round(enc_torch, 4),
        "encoder_ort_s": round(enc_ort, 4),
        "decoder_torch_ms": round(dec_torch * 1000, 2),
        "decoder_ort_ms": round(dec_ort * 1000, 2),
        "encoder_ort_over_torch": round(enc_ort / enc_torch, 3),
        "decoder_ort_over_torch": round(dec_ort / dec_torch, 3),
        "max_abs_logit_diff": float(np.abs(a - b).max()),
        "export_s": round(export_s, 1),
    }
    if args.int8:
        export_sam(sam, tmp / "int8", args.model_type, quantize="int8")
        q = OnnxSamSegmenter(tmp / "int8", providers=["CPUExecutionProvider"])
        ious = []
        for seed in range(5):
            r = np.random.RandomState(seed)
            im = (r.rand(480, 640, 3) * 255).astype(np.uint8)
            p = (r.rand(2, 2) * [640, 480]).astype(np.float32)
            ort_seg.set_image(im)
            q.set_image(im)
            m32 = ort_seg.predict(p, np.array([1, 1]), None)[0]
            m8 = q.predict(p, np.array([1, 1]), None)[0]
            for k in range(3):
                union = (m32[k] | m8[k]).sum()
                ious.append(float((m32[k] & m8[k]).sum() / union) if union else 1.0)
        row["int8_mask_iou_vs_fp32"] = round(float(np.mean(ious)), 4)
        row["encoder_int8_s"] = round(median_time(lambda: q._embed(img), args.reps), 4)
    print(f"SAM {args.model_type} (random weights) on CPU, {row['threads']} threads, medians of {args.reps} runs")
    print(f"{'part':<8} {'torch':>10} {'onnxruntime':>12} {'ratio':>7}")
    print(f"{'encoder':<8} {enc_torch:>9.3f}s {enc_ort:>11.3f}s {enc_ort / enc_torch:>7.3f}")
    print(f"{'decoder':<8} {dec_torch * 1000:>8.1f}ms {dec_ort * 1000:>10.1f}ms {dec_ort / dec_torch:>7.3f}")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
