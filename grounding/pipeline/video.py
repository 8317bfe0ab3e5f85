"""Video referring segmentation: per-frame maps (frames batched through the transformer) or clip
maps (a video diffusion transformer over windows of frames, one forward per window: each frame
gets the map of the latent frame it was folded into), temporal aggregation of the maps, SAM on
every frame with the previous frame's mask as a mask prompt, and the referent's identity kept by
overlap with the previous mask.

Frames stream through: at most ``2·window + batch_frames`` frames (clip maps: ``clip_frames`` +
``window``) are held at any time, so memory stays bounded however long the video is. This module
orchestrates; frames come in through ``frames``, maps are aggregated by ``motion`` and results go
out through ``video_output``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from ..config import UnsupportedOption, VideoMaps
from ..segment.segmenters import map_confidence
from .frames import read_frames
from .motion import aggregate

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
    # Propagation (``propagate``): the map at keyframes only, a SAM 2-family tracker's memory between
    # them — the first frame where the referent is present (searched every ``search_every`` frames),
    # then every ``keyframe_every`` frames and wherever the tracker's presence flips; a keyframe whose
    # map and tracked masks overlap less than ``reanchor_iou`` re-anchors the tracker on the map's
    # mask; ``anchors`` conditioning frames stay in its memory. ``window`` / ``motion`` /
    # ``mask_prompt`` apply to per-frame maps only.
    propagate: bool = False
    keyframe_every: int = 8
    search_every: int = 1
    reanchor_iou: float = 0.5
    anchors: int = 4

    def __post_init__(self):
        if self.maps not in ("frame", "clip"):
            raise ValueError(f"video maps must be 'frame' or 'clip', got {self.maps!r}")
        if self.clip_frames < 1 or not 0 <= self.clip_overlap < self.clip_frames:
            raise ValueError(
                f"clip_frames must be ≥ 1 and 0 ≤ clip_overlap < clip_frames, got "
                f"{self.clip_frames} / {self.clip_overlap}"
            )
        if self.keyframe_every < 1 or self.search_every < 1 or self.anchors < 1:
            raise ValueError(
                f"keyframe_every, search_every and anchors must be ≥ 1, got "
                f"{self.keyframe_every} / {self.search_every} / {self.anchors}"
            )
        if not 0.0 <= self.reanchor_iou <= 1.0:
            raise ValueError(f"reanchor_iou must be in [0, 1], got {self.reanchor_iou}")
        if self.propagate and self.maps != "frame":
            raise ValueError("propagation takes per-frame maps at keyframes; maps='clip' cannot be combined with it")


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
    source: str = "map"  # "map": the map's segmentation; "tracked": carried by the tracker (propagation)
    dit: bool = True  # a DiT forward ran on this frame


@dataclass
class VideoResult:
    expression: str
    frames: list[FrameResult]
    keyframe: int  # the frame whose map was most confident (among frames with a DiT forward)

    @property
    def masks(self) -> list[np.ndarray]:
        return [f.mask for f in self.frames]


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


def clip_windows(
    frames: Iterator[tuple[int, Image.Image]], size: int, overlap: int
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
            buf = buf[size - overlap :]
            lo = overlap - keep_back
    if len(buf) > lo:
        yield buf, lo, len(buf)


def _clip_maps(grounder, batch: list[tuple[int, Image.Image]], expression: str, cfg) -> list:
    """One clip through the video DiT: a ``ReferentMap`` per frame of ``batch`` (the clip padded to
    the VAE's ``4k + 1`` frames by repeating its last frame; the padding's maps dropped)."""
    from ..backends.video_dit import clip_length

    images = [im for _, im in batch]
    n = clip_length(len(images), grounder.backend.temporal)
    return grounder.map_stage.clip(images + [images[-1]] * (n - len(images)), expression, cfg)[: len(images)]


def iter_video(
    grounder,
    frames,
    expression: str,
    video: VideoConfig | None = None,
    cancel=None,
    start: int = 0,
    prev_mask: np.ndarray | None = None,
    **overrides,
) -> Iterator[FrameResult]:
    """Stream ``FrameResult``s (``video.propagate``: maps at keyframes, ``propagate.iter_propagated``).
    ``cancel()`` (optional) is checked between batches; when it
    returns True the stream stops. ``start`` resumes at that frame: earlier frames are skipped,
    except the ``window`` before it, whose maps are recomputed as temporal context;
    ``prev_mask`` is the mask of frame ``start - 1`` (the first resumed frame gets no SAM mask
    prompt)."""
    video = video or VideoConfig()
    if any(k.replace("__", ".").split(".")[0] == "proposals" for k in overrides):
        raise UnsupportedOption(
            "proposals apply to images; a video's masks come from map prompts or propagation", "proposals.mode"
        )
    overrides = {**overrides, "proposals.mode": "none"}  # also when the model's grounding.json sets them
    if video.propagate:
        from .propagate import iter_propagated

        yield from iter_propagated(grounder, frames, expression, video, cancel, start, prev_mask, **overrides)
        return
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
        agg = (
            aggregate(window_maps, center, video.window, video.decay, item.grid, video.motion)
            if video.window
            else item.map
        )
        result, seg = grounder.segment_map(
            item,
            cfg,
            token_map=agg,
            prev_mask=prev_mask if video.identity_weight else None,
            mask_prompt=prev_low if video.mask_prompt else None,
            identity_weight=video.identity_weight,
        )
        conf = map_confidence(result.heatmap, result.mask)
        present = bool(result.mask.any()) and conf >= video.present_threshold
        prev_mask = result.mask if present else prev_mask
        prev_low = seg.low_res if present else prev_low
        history.append(item.map)
        return FrameResult(
            idx,
            result.mask,
            result.box,
            result.score,
            result.heatmap,
            present,
            conf,
            result.points,
            result.point_labels,
            result.timings_ms,
            item.image,
        )

    def needed(pair) -> bool:
        return pair[0] >= context_from

    if video.maps == "clip":
        from ..backends.video_dit import latent_frames

        grounder.map_stage.require_video()
        latent_frames(video.clip_frames, grounder.backend.temporal)  # a window length the VAE takes
        windows = (
            (w[lo:hi], _clip_maps(grounder, w, expression, cfg)[lo:hi])
            for w, lo, hi in clip_windows(
                filter(needed, enumerate(read_frames(frames))), video.clip_frames, video.clip_overlap
            )
        )
    else:
        windows = (
            (batch, grounder.referent_maps([(im, expression) for _, im in batch], cfg))
            for batch in _batched(filter(needed, enumerate(read_frames(frames))), max(1, video.batch_frames))
        )
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


def keyframe_of(ranks: Iterable[tuple[bool, float]]) -> int:
    """The keyframe's position among per-frame ``(dit, confidence)`` pairs: the most confident frame
    a map decided (propagation: a tracked frame's confidence is the tracker's object probability,
    not a map's), the first on ties; 0 when there are none."""
    best, key = (False, -1.0), 0
    for i, rank in enumerate(ranks):
        if rank > best:
            best, key = rank, i
    return key


def segment_video(grounder, frames, expression: str, video: VideoConfig | None = None, **overrides) -> VideoResult:
    results = []
    for f in iter_video(grounder, frames, expression, video, **overrides):
        f.image = None
        results.append(f)
    if not results:
        raise ValueError("the video has no frames")
    key = keyframe_of((f.dit, f.confidence) for f in results)
    return VideoResult(grounder.tokens(expression).expression, results, key)
