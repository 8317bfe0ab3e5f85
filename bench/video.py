"""Benchmark: video referring segmentation throughput (frames per second) with and without
frame batching, on the medium CPU config (random FLUX, 4 dual + 4 single blocks, width 512).

    python bench/video.py [--frames 32] [--resolution 64] [--batches 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--model", default=None, help="pipeline folder (default: a medium random FLUX in a temp dir)")
    args = ap.parse_args()

    from fixtures import moving_video  # the tests' synthetic moving-disc video

    from grounding import Grounder
    from grounding.backends.tiny import save_tiny_model
    from grounding.pipeline.video import VideoConfig, iter_video

    model = args.model or str(save_tiny_model(Path(tempfile.mkdtemp()) / "medium", "flux", size="medium"))
    g = Grounder.from_pretrained(model, device="cpu", resolution=args.resolution)
    frames, _ = moving_video(args.frames, 128, 96)
    list(iter_video(g, frames[:4], "the red circle", VideoConfig(batch_frames=4)))  # warm-up
    rows = {}
    for b in (int(v) for v in args.batches.split(",")):
        t = time.perf_counter()
        n = sum(1 for _ in iter_video(g, frames, "the red circle", VideoConfig(batch_frames=b)))
        rows[b] = n / (time.perf_counter() - t)
    print(f"medium FLUX at {args.resolution} px, {args.frames} frames of 128×96, map-threshold masks, CPU")
    print(f"{'batch':>5} {'fps':>7}")
    for b, fps in rows.items():
        print(f"{b:>5} {fps:>7.2f}")
    base = rows.get(1)
    print(json.dumps({"bench": "video", "fps": {str(k): round(v, 3) for k, v in rows.items()},
                      "batched_over_unbatched": round(max(rows.values()) / base, 3) if base else None,
                      "frames": args.frames, "resolution": args.resolution}))


if __name__ == "__main__":
    main()
