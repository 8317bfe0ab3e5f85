"""Video referring segmentation: per-frame maps (frames batched through the transformer) or clip
maps (a video diffusion transformer over windows of frames, one forward per window: each frame
gets the map of the latent frame it was folded into), temporal aggregation of the maps, SAM on
every frame with the previous frame's mask as a mask prompt, and the referent's identity kept by
overlap with the previous mask.

Frames stream through: at most ``2·window + batch_frames`` frames (clip maps: ``clip_frames`` +
``window``) are held at any time, so memory stays bounded however long the video is.
"""

from __future__ import annotations

import io
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from ..config import VideoMaps
from ..readout import maps
from ..segment.segmenters import map_confidence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class VideoConfig:
    """How frames are combined. Each part can be switched off."""

    batch_frames: int = 4  # frames per transformer forward
    window: int = 2  # temporal aggregation: frames on each side (0 = off)
    decay: float = 0.6  # weight of a frame d steps away: decay ** d
    motion: int = 2  # motion compensation: tokens a map may move per frame step (0 = off)
    mask_prompt: bool = True  # SAM gets the previous frame's low-res mask as a prompt
    identity_weight: float = 0.5  # weight of overlap with the previous mask when choosing a mask (0 = off)
    present_threshold: float = 0.05  # map confidence under this (or an empty mask) → present = False
    # Where maps come from: "frame" — the model over each frame; "clip" — a video DiT (Wan,
    # HunyuanVideo) over windows of ``clip_frames`` frames (4k + 1 for their causal VAEs),
    # ``clip_overlap`` shared with the next window; a frame takes the map of the window it sits most inside.
    maps: VideoMaps = "frame"
    clip_frames: int = 17
    clip_overlap: int = 4

    def __post_init__(self):
        if self.maps not in ("frame", "clip"):
            raise ValueError(f"video maps must be 'frame' or 'clip', got {self.maps!r}")
        if self.clip_frames < 1 or not 0 <= self.clip_overlap < self.clip_frames:
            raise ValueError(f"clip_frames must be ≥ 1 and 0 ≤ clip_overlap < clip_frames, got "
                             f"{self.clip_frames} / {self.clip_overlap}")


@dataclass
class FrameResult:
    index: int
    mask: np.ndarray  # bool [H, W]
    box: tuple[float, float, float, float]
    score: float
    heatmap: np.ndarray  # float32 [H, W]
    present: bool
    confidence: float  # map confidence of the (aggregated) heatmap inside the mask
    points: np.ndarray
    point_labels: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    image: Image.Image | None = None  # the frame (set by ``iter_video``; dropped by ``segment_video``)


@dataclass
class VideoResult:
    expression: str
    frames: list[FrameResult]
    keyframe: int  # the frame whose map was most confident

    @property
    def masks(self) -> list[np.ndarray]:
        return [f.mask for f in self.frames]


# --- frame reading -------------------------------------------------------------------------------
def read_frames(src) -> Iterator[Image.Image]:
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
        names = sorted(n for n in z.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES and not n.startswith("__MACOSX"))
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


# --- temporal aggregation --------------------------------------------------------------------------
def translate(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``[gh, gw]`` map moved by (dy, dx) tokens; what enters from outside is 0."""
    out = torch.zeros_like(m)
    gh, gw = m.shape
    if abs(dy) >= gh or abs(dx) >= gw:
        return out
    ys, yd = (slice(0, gh - dy), slice(dy, gh)) if dy >= 0 else (slice(-dy, gh), slice(0, gh + dy))
    xs, xd = (slice(0, gw - dx), slice(dx, gw)) if dx >= 0 else (slice(-dx, gw), slice(0, gw + dx))
    out[yd, xd] = m[ys, xs]
    return out


def displacement(m: torch.Tensor, ref: torch.Tensor, reach: int, patch: int = 2) -> tuple[int, int]:
    """(dy, dx) within ±``reach`` tokens that best lays ``m`` ``[gh, gw]`` onto ``ref`` around
    ``ref``'s peak: the largest sum of ``ref × translate(m)`` over the (2·patch+1)² cells there.
    Ties go to the smaller move (no motion first)."""
    gh, gw = ref.shape
    py, px = divmod(int(ref.argmax()), gw)
    y0, y1, x0, x1 = max(0, py - patch), min(gh, py + patch + 1), max(0, px - patch), min(gw, px + patch + 1)
    tpl = ref[y0:y1, x0:x1]
    moves = sorted(((dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)),
                   key=lambda d: (abs(d[0]) + abs(d[1]), d))
    best, best_score = (0, 0), -1.0
    for dy, dx in moves:
        score = float((tpl * translate(m, dy, dx)[y0:y1, x0:x1]).sum())
        if score > best_score:
            best, best_score = (dy, dx), score
    return best


def aggregate(token_maps: list[torch.Tensor], center: int, window: int, decay: float,
              grid: tuple[int, int] | None = None, motion: int = 0) -> torch.Tensor:
    """Weighted mean of normalised token maps around ``center``: weight ``decay**|d|`` for the
    frames within ``window`` that exist. ``[N]`` each → ``[N]``.

    With ``grid`` and ``motion`` > 0 the maps are motion-compensated first: a frame d steps away
    is moved by its ``displacement`` (at most ``motion·|d|`` tokens) onto the centre frame's map,
    so a moving referent adds up where it is now instead of smearing along its path, and a
    static look-alike beside it no longer collects every frame's mass."""
    lo, hi = max(0, center - window), min(len(token_maps) - 1, center + window)
    weights = torch.tensor([decay ** abs(i - center) for i in range(lo, hi + 1)], dtype=torch.float32)
    stack = torch.stack([maps.normalise(token_maps[i]) for i in range(lo, hi + 1)])
    if grid is not None and motion > 0:
        ref = stack[center - lo].reshape(grid)
        for k, i in enumerate(range(lo, hi + 1)):
            if i != center:
                m = stack[k].reshape(grid)
                stack[k] = translate(m, *displacement(m, ref, motion * abs(i - center))).reshape(-1)
    return (stack * weights[:, None]).sum(0) / weights.sum()


def _cancellable(it: Iterator, cancel) -> Iterator:
    """``it``'s items while ``cancel()`` (checked before each) is not True."""
    while True:
        if cancel is not None and cancel():
            return
        try:
            yield next(it)
        except StopIteration:
            return


def _batched(it: Iterator, n: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def clip_windows(frames: Iterator[tuple[int, Image.Image]], size: int, overlap: int
                 ) -> Iterator[tuple[list[tuple[int, Image.Image]], int, int]]:
    """Windows of ``size`` (index, frame) pairs, each sharing ``overlap`` frames with the next, with
    the slice of each window whose frames take their map from it: ``(window, lo, hi)``. A frame in
    an overlap goes to the window it sits more inside; the last window keeps the rest."""
    keep_back = overlap // 2  # trailing frames of a window left to the next one
    buf: list[tuple[int, Image.Image]] = []
    lo = 0
    for pair in frames:
        buf.append(pair)
        if len(buf) == size:
            yield list(buf), lo, size - keep_back
            buf = buf[size - overlap:]
            lo = overlap - keep_back
    if len(buf) > lo:
        yield buf, lo, len(buf)


def _clip_maps(grounder, batch: list[tuple[int, Image.Image]], expression: str, cfg) -> list:
    """One clip through the video DiT: a ``ReferentMap`` per frame of ``batch`` (the clip padded to
    the VAE's ``4k + 1`` frames by repeating its last frame; the padding's maps dropped)."""
    from ..backends.video import clip_length

    images = [im for _, im in batch]
    n = clip_length(len(images), grounder.backend.temporal)
    return grounder.maps.clip(images + [images[-1]] * (n - len(images)), expression, cfg)[: len(images)]


def iter_video(grounder, frames, expression: str, video: VideoConfig | None = None, cancel=None,
               start: int = 0, prev_mask: np.ndarray | None = None, **overrides) -> Iterator[FrameResult]:
    """Stream ``FrameResult``s. ``cancel()`` (optional) is checked between batches; when it
    returns True the stream stops. ``start`` resumes at that frame: earlier frames are skipped,
    except the ``window`` before it, whose maps are recomputed as temporal context;
    ``prev_mask`` is the mask of frame ``start - 1`` (the first resumed frame gets no SAM mask
    prompt)."""
    video = video or VideoConfig()
    cfg = grounder.config_for(overrides)
    grounder.tokens(expression, cfg)  # a bad expression fails before any frame is read
    pending: deque = deque()  # ReferentMap items not yet finished, with their global index
    history: deque = deque(maxlen=video.window)  # token maps of finished frames (for the past side)
    prev_low = None
    context_from = max(0, start - video.window)

    def finish(item, idx: int, future: list) -> FrameResult:
        nonlocal prev_mask, prev_low
        window_maps = list(history) + [item.map] + future
        center = len(history)
        agg = (aggregate(window_maps, center, video.window, video.decay, item.grid, video.motion)
               if video.window else item.map)
        result, seg = grounder.segment_map(
            item, cfg, token_map=agg, prev_mask=prev_mask if video.identity_weight else None,
            mask_prompt=prev_low if video.mask_prompt else None, identity_weight=video.identity_weight)
        conf = map_confidence(result.heatmap, result.mask)
        present = bool(result.mask.any()) and conf >= video.present_threshold
        prev_mask = result.mask if present else prev_mask
        prev_low = seg.low_res if present else prev_low
        history.append(item.map)
        return FrameResult(idx, result.mask, result.box, result.score, result.heatmap, present, conf,
                           result.points, result.point_labels, result.timings_ms, item.image)

    def needed(pair) -> bool:
        return pair[0] >= context_from

    if video.maps == "clip":
        from ..backends.video import latent_frames

        grounder.maps.require_video()
        latent_frames(video.clip_frames, grounder.backend.temporal)  # a window length the VAE takes
        windows = ((w[lo:hi], _clip_maps(grounder, w, expression, cfg)[lo:hi])
                   for w, lo, hi in clip_windows(filter(needed, enumerate(read_frames(frames))),
                                                 video.clip_frames, video.clip_overlap))
    else:
        windows = ((batch, grounder.referent_maps([(im, expression) for _, im in batch], cfg))
                   for batch in _batched(filter(needed, enumerate(read_frames(frames))), max(1, video.batch_frames)))
    for batch, items in _cancellable(windows, cancel):
        for (idx, _), item in zip(batch, items):
            if idx < start:
                history.append(item.map)  # context only: finished before the resume
                continue
            pending.append((idx, item))
        while len(pending) > video.window:
            idx, item = pending.popleft()
            future = [it.map for _, it in list(pending)[: video.window]]
            yield finish(item, idx, future)
    while pending:
        idx, item = pending.popleft()
        yield finish(item, idx, [it.map for _, it in list(pending)[: video.window]])


def segment_video(grounder, frames, expression: str, video: VideoConfig | None = None, **overrides) -> VideoResult:
    results = []
    for f in iter_video(grounder, frames, expression, video, **overrides):
        f.image = None
        results.append(f)
    if not results:
        raise ValueError("the video has no frames")
    key = max(range(len(results)), key=lambda i: results[i].confidence)
    return VideoResult(grounder.tokens(expression).expression, results, key)


# --- outputs -----------------------------------------------------------------------------------
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
        self.stream = self.container.add_stream(codec, rate=max(1, round(fps)))
        self.stream.pix_fmt = "yuv420p"
        self.size = None

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

    return {"frame": f.index, "present": f.present, "score": round(f.score, 6), "confidence": round(f.confidence, 6),
            "box": [round(float(v), 2) for v in f.box], "segmentation": mask_to_rle(f.mask),
            "points": [[round(float(x), 2), round(float(y), 2)] for x, y in f.points]}


def write_outputs(results: Iterable[FrameResult], out: Path, fps: float, overlay_video: bool = True) -> dict:
    """Per-frame palette masks ``out/masks/00000.png``, ``out/overlay.mp4`` and the frame docs."""
    from .result import GroundingResult, overlay

    out.mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    writer = OverlayWriter(out / "overlay.mp4", fps) if overlay_video else None
    docs, best = [], (-1.0, 0)
    try:
        for f in results:
            save_palette_mask(f.mask, out / "masks" / f"{f.index:05d}.png")
            if writer is not None:
                r = GroundingResult("", f.mask, f.box, f.score, f.heatmap, f.points, f.point_labels)
                writer.write(overlay(f.image, r))
            docs.append(frame_doc(f))
            best = max(best, (f.confidence, -f.index))
    finally:
        if writer is not None:
            writer.close()
    return {"frames": docs, "keyframe": -best[1], "fps": fps}


def overlay_video_from_docs(video, docs: list[dict], out: Path, fps: float) -> Path:
    """An overlay mp4 (mask, box, points; no heatmap) drawn from stored frame documents."""
    from .result import GroundingResult, overlay, rle_to_mask

    writer = OverlayWriter(out, fps)
    try:
        for image, doc in zip(read_frames(video), docs):
            mask = rle_to_mask(doc["segmentation"])
            pts = np.array(doc["points"], dtype=np.float32).reshape(-1, 2)
            r = GroundingResult("", mask, tuple(doc["box"]), doc["score"], np.zeros(mask.shape, np.float32), pts,
                                np.ones(len(pts), dtype=np.int32))
            writer.write(overlay(image, r, heat_alpha=0.0))
    finally:
        writer.close()
    return out
