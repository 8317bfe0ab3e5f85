"""Video by propagation: the DiT map at keyframes only, the segmenter's video memory in between.

Per-frame maps (``video.iter_video``) pay one DiT forward per frame and never *track* the
referent. Here the sentence is grounded at keyframes and a SAM 2-family tracker
(``segment.tracker``) carries the mask through the frames between, as Grounded-SAM-2 and SAM 3's
video predictor do.

**Keyframes** (``Keyframes``): a frame gets a DiT map when

1. no mask is anchored yet — the search for the first frame where the referent is present (and,
   after the map lost it, for the frame where it comes back): every ``search_every`` frames;
2. ``every`` frames have passed since the last map;
3. the tracker's presence flips (the object leaves or comes back in the tracker's view): the map
   checks that frame at once.

**The IoU rule** at a keyframe, between the map's mask *M* (the grounder's segmentation of the map,
present as in image requests) and the tracked mask *T*:

- *M* present and *T* present with IoU(*M*, *T*) ≥ ``reanchor_iou``: they agree; the tracked mask
  stands (it carries the identity) and the memory is untouched;
- *M* present, and *T* absent or IoU < ``reanchor_iou``: they disagree; *M* is the frame's mask and
  is anchored in the tracker (a conditioning frame every later frame attends to);
- *M* absent: the map decides presence — the frame is absent and the anchor is dropped (the
  tracker restarts with an empty memory at the next anchor), so a referent the sentence no longer
  picks out is not carried on.

Between keyframes a frame is the tracker's: present when its object score says so and the mask
is not empty, ``confidence`` its object probability, no heatmap (zeros) and no prompt points. Each
``FrameResult`` says where it came from (``source``: ``"map"`` or ``"tracked"``) and whether a DiT
forward ran on it (``dit``); with ``search_every`` > 1 the frames skipped while searching are
absent with ``source`` ``"search"``.

Streaming, resume and cancel as in ``video.iter_video``: one frame in memory at a time (the
tracker's session is pruned to what it can still read); ``start`` resumes at a frame, re-anchoring
the tracker on ``prev_mask`` (the last recorded mask, on its own frame) when there is one and
searching from ``start`` when there is none; ``cancel()`` is checked before every frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..segment.prompts import box_of, mask_iou
from ..segment.segmenters import map_confidence
from .frames import read_frames
from .video import FrameResult, VideoConfig

MAP, TRACKED, SEARCH = "map", "tracked", "search"


@dataclass
class Keyframes:
    """Which frames get a DiT map (the module docstring's three rules)."""

    every: int = 8
    search_every: int = 1
    last_map: int | None = None
    tracked_present: bool | None = None  # the tracker's presence on the previous frame

    def __post_init__(self):
        if self.every < 1 or self.search_every < 1:
            raise ValueError(
                f"keyframe intervals must be ≥ 1, got every={self.every}, search_every={self.search_every}"
            )

    def wants_map(self, index: int, tracked_present: bool | None) -> bool:
        """Whether frame ``index`` gets a map; ``tracked_present``: the tracker's view of it (None
        when nothing is anchored: the search)."""
        since = None if self.last_map is None else index - self.last_map
        if tracked_present is None:
            return since is None or since >= self.search_every
        flipped = self.tracked_present is not None and tracked_present != self.tracked_present
        return since is None or since >= self.every or flipped


def decide(
    map_present: bool, map_mask: np.ndarray, tracked_present: bool, tracked: np.ndarray, reanchor_iou: float
) -> str:
    """The IoU rule: ``"agree"`` (keep the tracked mask), ``"anchor"`` (the map's mask, anchored) or
    ``"absent"`` (the map says the referent is not there)."""
    if not map_present:
        return "absent"
    if tracked_present and mask_iou(map_mask, tracked) >= reanchor_iou:
        return "agree"
    return "anchor"


def require_tracker(grounder):
    """The grounder's segmenter's ``Tracker``; ``ValueError`` (safe to show a client) when its
    segmenter has no video model."""
    tracker_of = getattr(grounder.segmenter, "tracker", None)
    if tracker_of is None:
        name = getattr(grounder.segmenter, "name", None) or "no segmenter"
        raise ValueError(
            f"propagation needs a SAM 2-family segmenter (a transformers SAM 2 / SAM 3 tracker / EdgeTAM folder "
            f"or hub id); this grounder has {name}"
        )
    return tracker_of()


def iter_propagated(
    grounder,
    frames,
    expression: str,
    video: VideoConfig | None = None,
    cancel=None,
    start: int = 0,
    prev_mask: np.ndarray | None = None,
    **overrides,
) -> Iterator[FrameResult]:
    """``FrameResult``s of ``frames``, maps at keyframes and the tracker's masks between."""
    video = video or VideoConfig(propagate=True)
    tracker = require_tracker(grounder)
    cfg = grounder.config_for(overrides)
    grounder.tokens(expression, cfg)  # a bad expression fails before any frame is read
    schedule = Keyframes(video.keyframe_every, video.search_every)
    session = tracker.start(video.anchors)
    last_mask = prev_mask
    prev_image = None

    for idx, image in enumerate(read_frames(frames)):
        if cancel is not None and cancel():
            return
        pixels = np.asarray(image)
        if idx < start:
            prev_image = pixels if idx == start - 1 else None
            continue
        if idx == start and start > 0 and prev_mask is not None and prev_mask.any() and prev_image is not None:
            session.step(start - 1, prev_image, anchor=prev_mask)  # resume: the last recorded mask re-anchors
            schedule.last_map = start - 1
        t0 = time.perf_counter()
        track = session.step(idx, pixels) if session.anchored else None
        t1 = time.perf_counter()
        timings = {"tracker": (t1 - t0) * 1000} if track is not None else {}
        tracked_present = None if track is None else track.present
        if not schedule.wants_map(idx, tracked_present):
            schedule.tracked_present = tracked_present
            if track is None:  # searching between search frames: nothing anchored, nothing found
                yield _unmapped(idx, np.zeros(pixels.shape[:2], bool), 0.0, False, timings, image, SEARCH)
                continue
            mask = track.mask if track.present else np.zeros_like(track.mask)
            last_mask = mask if track.present else last_mask
            yield _unmapped(idx, mask, track.probability, track.present, timings, image, TRACKED)
            continue

        item = grounder.referent_maps([(image, expression)], cfg)[0]
        result, _ = grounder.segment_map(
            item,
            cfg,
            prev_mask=last_mask if video.identity_weight else None,
            identity_weight=video.identity_weight,
        )
        conf = map_confidence(result.heatmap, result.mask)
        map_present = bool(result.present and result.mask.any())  # the decision image requests return
        schedule.last_map = idx
        timings.update(result.timings_ms)
        verdict = decide(
            map_present,
            result.mask,
            bool(tracked_present),
            track.mask if track is not None else result.mask,
            video.reanchor_iou,
        )
        if verdict == "agree":
            assert track is not None
            mask, source, present = track.mask, TRACKED, True
        elif verdict == "anchor":
            t2 = time.perf_counter()
            if track is None:  # nothing anchored: the session is fresh
                track = session.step(idx, pixels, anchor=result.mask)
            else:
                track = session.reanchor(idx, result.mask)
            timings["tracker"] = timings.get("tracker", 0.0) + (time.perf_counter() - t2) * 1000
            mask, source, present = result.mask, MAP, True
        else:  # the map says the referent is not there: drop the anchor
            mask, source, present = np.zeros_like(result.mask), MAP, False
            if session.anchored:
                session = tracker.start(video.anchors)
        schedule.tracked_present = present if session.anchored else None
        last_mask = mask if present else last_mask
        yield FrameResult(
            idx,
            mask,
            box_of(mask) if mask.any() else (0.0, 0.0, 0.0, 0.0),
            result.score,
            result.heatmap,
            present,
            conf,
            result.points,
            result.point_labels,
            timings,
            image,
            source=source,
            dit=True,
        )


def _unmapped(idx: int, mask: np.ndarray, probability: float, present: bool, timings: dict, image, source: str):
    """A frame no map decided: the tracker's mask (or none while searching), its object
    probability as score and confidence, no heatmap, no prompt points."""
    return FrameResult(
        idx,
        mask,
        box_of(mask) if mask.any() else (0.0, 0.0, 0.0, 0.0),
        probability,
        np.zeros(mask.shape, np.float32),
        present,
        probability,
        np.zeros((0, 2), np.float32),
        np.zeros(0, np.int32),
        timings,
        image,
        source=source,
        dit=False,
    )
