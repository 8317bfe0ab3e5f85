"""Video results out: DAVIS-palette mask PNGs, an overlay mp4 (PyAV; H.264 where the encoder is
there, else mpeg4), and the per-frame JSON documents the CLI and the service write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from .frames import read_frames
from .video import FrameResult, keyframe_of

DAVIS_PALETTE = [0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254


def save_palette_mask(mask: np.ndarray, path: Path, label: int = 1) -> None:
    """A DAVIS-style palette PNG: 0 background, ``label`` the referent."""
    im = Image.fromarray(mask.astype(np.uint8) * label, mode="P")
    im.putpalette(DAVIS_PALETTE)
    im.save(path)


class OverlayWriter:
    """Writes overlay frames to an H.264 mp4 (mpeg4 when no H.264 encoder is there) with PyAV."""

    def __init__(self, path: Path, fps: float):
        import av

        self.av = av
        self.container = av.open(str(path), "w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream: Any = self.container.add_stream(codec, rate=max(1, round(fps)))  # a VideoStream
        stream.pix_fmt = "yuv420p"
        self.stream = stream
        self.size: tuple[int, int] | None = None

    def write(self, image: Image.Image) -> None:
        if self.size is None:
            w, h = image.size
            self.size = (w - w % 2, h - h % 2) if w > 1 and h > 1 else (2, 2)
            self.stream.width, self.stream.height = self.size
        frame = self.av.VideoFrame.from_image(image.convert("RGB").resize(self.size))
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def frame_doc(f: FrameResult) -> dict:
    from .result import mask_to_rle

    return {
        "frame": f.index,
        "present": f.present,
        "score": round(f.score, 6),
        "confidence": round(f.confidence, 6),
        "box": [round(float(v), 2) for v in f.box],
        "segmentation": mask_to_rle(f.mask),
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in f.points],
        "source": f.source,
        "dit": f.dit,
    }


def write_outputs(results: Iterable[FrameResult], out: Path, fps: float, overlay_video: bool = True) -> dict:
    """Per-frame palette masks ``out/masks/00000.png``, ``out/overlay.mp4`` and the frame docs."""
    from .result import GroundingResult, overlay

    out.mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    writer = OverlayWriter(out / "overlay.mp4", fps) if overlay_video else None
    docs, ranks = [], []
    try:
        for f in results:
            save_palette_mask(f.mask, out / "masks" / f"{f.index:05d}.png")
            if writer is not None and f.image is not None:
                r = GroundingResult("", f.mask, f.box, f.score, f.heatmap, f.points, f.point_labels)
                writer.write(overlay(f.image, r))
            docs.append(frame_doc(f))
            ranks.append((f.dit, f.confidence))
    finally:
        if writer is not None:
            writer.close()
    return {"frames": docs, "keyframe": docs[keyframe_of(ranks)]["frame"] if docs else 0, "fps": fps}


def overlay_video_from_docs(video, docs: list[dict], out: Path, fps: float) -> Path:
    """An overlay mp4 (mask, box, points; no heatmap) drawn from stored frame documents."""
    from .result import GroundingResult, overlay, rle_to_mask

    writer = OverlayWriter(out, fps)
    try:
        for image, doc in zip(read_frames(video), docs):
            mask = rle_to_mask(doc["segmentation"])
            pts = np.array(doc["points"], dtype=np.float32).reshape(-1, 2)
            r = GroundingResult(
                "",
                mask,
                tuple(doc["box"]),
                doc["score"],
                np.zeros(mask.shape, np.float32),
                pts,
                np.ones(len(pts), dtype=np.int32),
            )
            writer.write(overlay(image, r, heat_alpha=0.0))
    finally:
        writer.close()
    return out
