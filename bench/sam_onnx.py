"""Benchmark: SAM and SAM 2 encoders and decoders in torch vs onnxruntime on CPU, with fidelity.

Random-weight models at released sizes (no checkpoint needed): SAM ``vit_b`` (segment-anything,
exported by ``exporters.sam``) and SAM 2.1 Hiera-tiny (transformers' default ``Sam2Config``, which
is the released ``sam2.1_hiera_tiny`` configuration, exported by ``exporters.sam2``). Each is
exported three ways — fp32 as traced, fp32 through onnxruntime's transformer optimizer, and that
graph dynamically quantized to int8 — and each runtime variant is timed (medians over ``--reps``
runs after a warm-up, one image 480 × 640) and compared with torch on a parity set (3 images × 3
prompt sets): the largest low-res logit difference relative to torch's logit scale, and the mean
IoU of the three candidate masks against torch's. Final JSON line: per model,
``encoder_ort_over_torch`` (fp32), ``encoder_optimized_over_torch``, ``encoder_int8_over_torch``,
``decoder_ort_over_torch`` (time ratios; lower is better) and the fidelity numbers.

    python bench/sam_onnx.py [--models vit_b,sam2] [--reps 5] [--small]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.sam import export_sam  # noqa: E402
from exporters.sam2 import export_sam2  # noqa: E402
from grounding.segment.onnx_sam2 import OnnxSam2Segmenter  # noqa: E402
from grounding.segment.prompts import mask_iou  # noqa: E402
from grounding.segment.segmenters import OnnxSamSegmenter, SamSegmenter  # noqa: E402
from grounding.segment.transformers_sam import TransformersSamSegmenter  # noqa: E402
from timing import median_time  # noqa: E402  (bench/, this script's folder)

VARIANTS = ("fp32", "optimized", "int8")


def progress(step: str) -> None:
    """A progress line on stderr with the peak resident memory so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"[sam_onnx] {step} (peak RSS {peak:.1f} GiB)", file=sys.stderr, flush=True)


PROVIDERS = ["CPUExecutionProvider"]


def build(name: str, folder: Path, small: bool = False):
    """(torch segmenter, ``load(variant)`` → that variant's ONNX segmenter, export seconds per
    variant) for ``name``; the variants are exported up front and loaded one at a time. ``small``:
    the test suite's tiny models of the same classes instead (the script's smoke run)."""
    torch.manual_seed(0)
    seconds = {}
    if name == "sam2":
        from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

        if small:
            from synthetic.segmenters import build_tiny_sam2

            video, video_processor = build_tiny_sam2()
            model = Sam2Model(Sam2Config(**video.config.to_dict())).eval()
            model.load_state_dict(video.state_dict(), strict=False)
            processor = Sam2Processor(image_processor=video_processor.image_processor)
        else:
            model = Sam2Model(Sam2Config()).eval()
            processor = Sam2Processor(image_processor=Sam2ImageProcessor())
        for v in VARIANTS:
            t = time.perf_counter()
            export_sam2(model, processor, folder / v, optimize=v != "fp32", quantize="int8" if v == "int8" else None)
            seconds[v] = time.perf_counter() - t
            progress(f"sam2 exported {v}")
        return TransformersSamSegmenter(model, processor), lambda v: OnnxSam2Segmenter(folder / v, PROVIDERS), seconds
    from segment_anything import sam_model_registry

    from grounding.segment.segmenters import build_sam_tiny

    sam = build_sam_tiny() if small else sam_model_registry[name](checkpoint=None).eval()
    for v in VARIANTS:
        t = time.perf_counter()
        export_sam(sam, folder / v, name, optimize=v != "fp32", quantize="int8" if v == "int8" else None)
        seconds[v] = time.perf_counter() - t
        progress(f"{name} exported {v}")
    return SamSegmenter(sam), lambda v: OnnxSamSegmenter(folder / v, PROVIDERS), seconds


def fidelity(reference, other) -> tuple[float, float]:
    """(max |Δ low-res logits| / max |torch logits|, mean IoU of the candidate masks) of ``other``
    against ``reference`` over 3 images × 3 prompt sets (points, and points with a box)."""
    diffs, ious = [], []
    for seed in range(3):
        rng = np.random.RandomState(seed)
        image = (rng.rand(480, 640, 3) * 255).astype(np.uint8)
        reference.set_image(image)
        other.set_image(image)
        for k in range(3):
            points = (rng.rand(2, 2) * [640, 480]).astype(np.float32)
            box = np.array([100, 80, 500, 400], np.float32) if k == 2 else None
            a, _, la = reference.predict(points, np.array([1, 0]), box)
            b, _, lb = other.predict(points, np.array([1, 0]), box)
            diffs.append(float(np.abs(la - lb).max()) / (float(np.abs(la).max()) or 1.0))
            ious += [mask_iou(m, n) if (m | n).any() else 1.0 for m, n in zip(a, b)]  # both empty: agree
    return max(diffs), float(np.mean(ious))


def bench(name: str, reps: int, folder: Path, small: bool = False) -> dict:
    """One model's row: times, ratios and fidelity of every variant."""
    torch_seg, load, export_s = build(name, folder, small)
    rng = np.random.RandomState(0)
    image = (rng.rand(480, 640, 3) * 255).astype(np.uint8)
    points = np.array([[200.0, 150.0], [400.0, 300.0], [100.0, 400.0]], dtype=np.float32)
    labels = np.array([1, 1, 0])
    box = np.array([150, 100, 450, 380], dtype=np.float32)
    row: dict = {"model": name, "encoder_torch_s": median_time(lambda: torch_seg._embed(image), reps)}
    progress(f"{name} torch encoder timed")
    torch_seg.set_image(image)
    row["decoder_torch_ms"] = 1000 * median_time(lambda: torch_seg.predict(points, labels, box), reps * 4)
    for v in VARIANTS:  # one runtime session at a time: vit_b's arenas do not fit 24 GB together
        seg = load(v)
        row[f"encoder_{v}_s"] = median_time(lambda seg=seg: seg._embed(image), reps)
        seg.set_image(image)
        row[f"decoder_{v}_ms"] = 1000 * median_time(lambda seg=seg: seg.predict(points, labels, box), reps * 4)
        row[f"logit_rel_diff_{v}"], row[f"mask_iou_{v}"] = fidelity(torch_seg, seg)
        row[f"export_{v}_s"] = export_s[v]
        progress(f"{name} {v} timed and compared")
        if v == "optimized":
            row["fused"] = seg.manifest["optimized"]
        del seg
        gc.collect()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vit_b,sam2", help="comma-separated: vit_b / vit_l / vit_h / sam2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--small", action="store_true", help="tiny models of the same classes: a smoke run, no timings to quote"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sam-onnx-"))
    rows = [bench(name, args.reps, tmp / name, args.small) for name in args.models.split(",")]
    print(f"CPU, {torch.get_num_threads()} threads, medians of {args.reps} runs (decoder {args.reps * 4}), 480 × 640")
    head = f"{'model':<6} {'variant':<10} {'encoder':>9} {'÷ torch':>8} {'decoder':>9} {'÷ torch':>8}"
    print(f"{head} {'Δlogit':>8} {'mask IoU':>9}")
    summary = {"bench": "sam_onnx", "threads": torch.get_num_threads(), "reps": args.reps, "small": args.small}
    for r in rows:
        name = r["model"]
        print(f"{name:<6} {'torch':<10} {r['encoder_torch_s']:>8.3f}s {'':>8} {r['decoder_torch_ms']:>7.1f}ms")
        for v in VARIANTS:
            enc, dec = r[f"encoder_{v}_s"] / r["encoder_torch_s"], r[f"decoder_{v}_ms"] / r["decoder_torch_ms"]
            print(
                f"{'':<6} {v:<10} {r[f'encoder_{v}_s']:>8.3f}s {enc:>8.3f} {r[f'decoder_{v}_ms']:>7.1f}ms {dec:>8.3f}"
                f" {r[f'logit_rel_diff_{v}']:>8.1e} {r[f'mask_iou_{v}']:>9.4f}"
            )
        print(f"{'':<6} optimizer: {json.dumps(r['fused'])}")
        summary[name] = {
            "encoder_torch_s": round(r["encoder_torch_s"], 4),
            "encoder_ort_over_torch": round(r["encoder_fp32_s"] / r["encoder_torch_s"], 3),
            "encoder_optimized_over_torch": round(r["encoder_optimized_s"] / r["encoder_torch_s"], 3),
            "encoder_int8_over_torch": round(r["encoder_int8_s"] / r["encoder_torch_s"], 3),
            "decoder_ort_over_torch": round(r["decoder_fp32_ms"] / r["decoder_torch_ms"], 3),
            "decoder_int8_over_torch": round(r["decoder_int8_ms"] / r["decoder_torch_ms"], 3),
            **{f"logit_rel_diff_{v}": float(f"{r[f'logit_rel_diff_{v}']:.3g}") for v in VARIANTS},
            **{f"mask_iou_{v}": round(r[f"mask_iou_{v}"], 4) for v in VARIANTS},
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
