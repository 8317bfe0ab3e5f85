"""Benchmark: video referring segmentation throughput (frames per second) with and without
frame batching, on the medium CPU config (random FLUX, 4 dual + 4 single blocks, width 512); then
clip maps against per-frame maps on one video DiT (a medium random Wan 2.x, 4 blocks of 4 × 32) at
the same resolution: frames per second and the peak memory a run adds (resident set on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU).

    python bench/video.py [--frames 32] [--resolution 64] [--batches 1,4,8] [--clip-frames 17]
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
    ap.add_argument("--video-model", default=None, help="video DiT folder (default: a medium random Wan in a temp dir)")
    ap.add_argument("--clip-frames", type=int, default=17)
    ap.add_argument("--clip-overlap", type=int, default=4)
    args = ap.parse_args()

    from fixtures import moving_video  # the tests' synthetic moving-disc video
    from grounding import Grounder
    from grounding.pipeline.video import VideoConfig, iter_video
    from synthetic import save_tiny_model

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

    vmodel = args.video_model or str(save_tiny_model(Path(tempfile.mkdtemp()) / "wan", "wan", size="medium"))
    vg = Grounder.from_pretrained(vmodel, device="cpu", resolution=args.resolution)
    paths = {
        "frame (batch 4)": VideoConfig(batch_frames=4),
        f"clip ({args.clip_frames} frames, overlap {args.clip_overlap})": VideoConfig(
            maps="clip", clip_frames=args.clip_frames, clip_overlap=args.clip_overlap
        ),
    }
    for v in paths.values():  # warm-up
        list(iter_video(vg, frames[:5], "the red circle", VideoConfig(maps=v.maps, clip_frames=5, clip_overlap=0)))
    video_rows = {}
    for name, v in paths.items():
        with PeakMemory() as mem:
            t = time.perf_counter()
            n = sum(1 for _ in iter_video(vg, frames, "the red circle", v))
            fps = n / (time.perf_counter() - t)
        video_rows[name] = (fps, mem.peak_mib)
    print(f"\nmedium Wan at {args.resolution} px, the same {args.frames} frames")
    print(f"{'maps':<28} {'fps':>7} {'peak MiB':>9}")
    for name, (fps, mib) in video_rows.items():
        print(f"{name:<28} {fps:>7.2f} {mib:>9.1f}")
    (frame_fps, frame_mib), (clip_fps, clip_mib) = video_rows.values()
    print(
        json.dumps(
            {
                "bench": "video",
                "fps": {str(k): round(v, 3) for k, v in rows.items()},
                "batched_over_unbatched": round(max(rows.values()) / base, 3) if base else None,
                "clip_fps": round(clip_fps, 3),
                "frame_fps_video_dit": round(frame_fps, 3),
                "clip_over_frame": round(clip_fps / frame_fps, 3),
                "clip_peak_mib": round(clip_mib, 1),
                "frame_peak_mib": round(frame_mib, 1),
                "frames": args.frames,
                "resolution": args.resolution,
            }
        )
    )


class PeakMemory:
    """Peak memory a block adds: CUDA's max allocated when a GPU is in use, else the resident set
    sampled every 2 ms from /proc (torch's CPU allocations are invisible to tracemalloc)."""

    def __enter__(self):
        import threading

        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = _rss()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, _rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())
        self.peak_mib = (self.peak - self.base) / 2**20
        return False


def _rss() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


if __name__ == "__main__":
    main()
