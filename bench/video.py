"""Benchmark: video referring segmentation throughput (frames per second) with and without
frame batching, on the medium CPU config (random FLUX, 4 dual + 4 single blocks, width 512); then
clip maps against per-frame maps on one video DiT (a medium random Wan 2.x, 4 blocks of 4 × 32) at
the same resolution; then propagation (maps at keyframes, a SAM 2 video model's memory between
them) against per-frame maps with the same backbone (the medium FLUX), clip and segmenter family
(a tiny random SAM 2 saved as a released-style ``sam2_video`` folder), with the cost of one DiT
map and of one tracked segmenter frame printed beside them: frames per second, DiT forwards per
frame and the peak memory a run adds (resident set on the CPU, ``torch.cuda.max_memory_allocated``
on a GPU).

    python bench/video.py [--frames 32] [--resolution 64] [--batches 1,4,8] [--clip-frames 17] [--keyframe-every 8]
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
    ap.add_argument("--keyframe-every", type=int, default=8)
    ap.add_argument(
        "--propagate-resolution",
        type=int,
        default=128,
        help="the DiT's resolution in the propagation rows: one map must cost ≥ 5× one tracked frame",
    )
    ap.add_argument(
        "--segmenter", default=None, help="SAM 2-family folder (default: a tiny random SAM 2 in a temp dir)"
    )
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
    prop = propagation_rows(model, args, bouncing_clip(args.frames, 128, 96))
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
                **prop,
            }
        )
    )


def bouncing_clip(n: int, w: int, h: int) -> list:
    """A red disc bouncing left and right past a static blue square: in every frame."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[:h, :w]
    frames = []
    for t in range(n):
        phase = (6 * t) % (2 * (w - 32))
        cx = 16 + (phase if phase < w - 32 else 2 * (w - 32) - phase)
        arr = np.full((h, w, 3), 225, np.uint8)
        arr[(xx - cx) ** 2 + (yy - h // 3) ** 2 < 81] = (220, 30, 30)
        arr[(abs(xx - w // 2) < 8) & (abs(yy - 3 * h // 4) < 8)] = (30, 40, 220)
        frames.append(Image.fromarray(arr))
    return frames


def propagation_rows(model: str, args, frames: list) -> dict:
    """Per-frame maps against propagation (maps at keyframes, the tracker between) with one
    backbone and one SAM 2 segmenter; the costs of one DiT map and one tracked frame."""
    import numpy as np

    from grounding import Grounder
    from grounding.pipeline.video import VideoConfig, iter_video
    from synthetic.segmenters import save_tiny_segmenter
    from timing import median_time  # bench/, this script's folder

    seg = args.segmenter or str(save_tiny_segmenter(Path(tempfile.mkdtemp()) / "sam2", "sam2"))
    g = Grounder.from_pretrained(model, segmenter=seg, device="cpu", resolution=args.propagate_resolution)
    expr = "the red circle"
    # the two unit costs, each the median of 5 frames after a warm-up frame
    cfg = g.config_for({})
    images = iter(frames)
    map_ms = 1000 * median_time(lambda: g.referent_maps([(next(images), expr)], cfg), 5)
    session = g.segmenter.tracker().start()
    anchor = np.zeros(np.asarray(frames[0]).shape[:2], bool)
    anchor[10:30, 10:30] = True
    session.step(0, np.asarray(frames[0]), anchor=anchor)
    steps = ((t, np.asarray(frames[t])) for t in range(1, 7))
    track_ms = 1000 * median_time(lambda: session.step(*next(steps)), 5)
    paths = {
        "per-frame maps (batch 4)": VideoConfig(batch_frames=4),
        f"propagate (keyframe every {args.keyframe_every})": VideoConfig(
            propagate=True, keyframe_every=args.keyframe_every
        ),
    }
    for v in paths.values():  # warm-up
        list(iter_video(g, frames[:3], expr, v))
    rows = {}
    for name, v in paths.items():
        with PeakMemory() as mem:
            t = time.perf_counter()
            out = list(iter_video(g, frames, expr, v))
            fps = len(out) / (time.perf_counter() - t)
        rows[name] = (fps, sum(f.dit for f in out) / len(out), mem.peak_mib)
    print(
        f"\nmedium FLUX at {args.propagate_resolution} px + a tiny SAM 2 ({g.segmenter.name}), "
        f"{len(frames)} frames of a bouncing disc"
    )
    print(f"one DiT map {map_ms:.1f} ms, one tracked segmenter frame {track_ms:.1f} ms: ratio {map_ms / track_ms:.1f}")
    print(f"{'path':<30} {'fps':>7} {'DiT/frame':>10} {'peak MiB':>9}")
    for name, (fps, dit, mib) in rows.items():
        print(f"{name:<30} {fps:>7.2f} {dit:>10.3f} {mib:>9.1f}")
    (base_fps, base_dit, base_mib), (prop_fps, prop_dit, prop_mib) = rows.values()
    return {
        "map_ms": round(map_ms, 2),
        "tracked_frame_ms": round(track_ms, 2),
        "map_over_tracked_frame": round(map_ms / track_ms, 2),
        "per_frame_fps": round(base_fps, 3),
        "propagate_fps": round(prop_fps, 3),
        "propagate_over_per_frame": round(prop_fps / base_fps, 3),
        "dit_per_frame": {"per_frame": round(base_dit, 3), "propagate": round(prop_dit, 3)},
        "peak_mib": {"per_frame": round(base_mib, 1), "propagate": round(prop_mib, 1)},
        "keyframe_every": args.keyframe_every,
        "propagate_resolution": args.propagate_resolution,
    }


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
