"""Video frames in: a video file (PyAV: mp4, webm, …), a folder or zip of images (sorted by name), or
a sequence / iterator of images, arrays or paths — one RGB frame at a time, so a long video never
sits in memory. Unreadable input raises ``ValueError`` with a message safe to show a client (no
paths, the decoder's reason).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Generator, Iterator

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_frames(src) -> Generator[Image.Image, None, None]:
    """RGB frames, one at a time, from a video file (PyAV: mp4, webm, …), a folder or zip of
    images (sorted by name), or a sequence / iterator of images, arrays or paths."""
    if isinstance(src, (str, Path)):
        path = Path(src)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"{path} holds no image frames")
            for p in files:
                with Image.open(p) as im:
                    yield im.convert("RGB")
            return
        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path}")
        if zipfile.is_zipfile(path):
            yield from _zip_frames(path)
            return
        yield from _av_frames(path)
        return
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(bytes(src))
    if hasattr(src, "read") and hasattr(src, "seek"):  # a binary file object
        src.seek(0)
        is_zip = zipfile.is_zipfile(src)
        src.seek(0)
        yield from (_zip_frames(src) if is_zip else _av_frames(src))
        return
    for item in src:
        if isinstance(item, Image.Image):
            yield item.convert("RGB")
        elif isinstance(item, np.ndarray):
            yield Image.fromarray(item).convert("RGB")
        else:
            with Image.open(item) as im:
                yield im.convert("RGB")


def _zip_frames(src) -> Iterator[Image.Image]:
    with zipfile.ZipFile(src) as z:
        names = sorted(
            n for n in z.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES and not n.startswith("__MACOSX")
        )
        if not names:
            raise ValueError("the zip holds no image frames")
        for n in names:
            try:
                with Image.open(io.BytesIO(z.read(n))) as im:
                    yield im.convert("RGB")
            except Exception:
                raise ValueError(f"cannot read frame {n} of the zip") from None


def _av_frames(src) -> Iterator[Image.Image]:
    import av

    try:
        container = av.open(src if not isinstance(src, Path) else str(src), mode="r")
    except Exception as e:  # PyAV raises its own error types (InvalidDataError, …); no paths in messages
        raise ValueError(f"cannot read video: {getattr(e, 'strerror', None) or type(e).__name__}") from None
    with container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                yield frame.to_image().convert("RGB")
        except av.error.FFmpegError as e:
            raise ValueError(f"cannot decode video: {getattr(e, 'strerror', None) or type(e).__name__}") from None


def check_video(src) -> None:
    """Raise ``ValueError`` (the reader's message) unless ``src`` yields at least one frame."""
    frames = read_frames(src)
    try:
        if next(frames, None) is None:
            raise ValueError("cannot read video: it has no frames")
    finally:
        frames.close()


def video_fps(src, default: float = 24.0) -> float:
    """Frame rate of a video file (``default`` for frame folders, zips and sequences)."""
    if not isinstance(src, (str, Path)) or not Path(src).is_file() or zipfile.is_zipfile(src):
        return default
    import av

    try:
        with av.open(str(src)) as c:
            rate = c.streams.video[0].average_rate
            return float(rate) if rate else default
    except Exception:
        return default
