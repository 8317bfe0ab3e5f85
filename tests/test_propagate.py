"""Video by propagation (``grounding.pipeline.propagate``, ``grounding.segment.tracker``): the
keyframe schedule and the IoU rule as pure functions; the tracker session of each transformers
SAM 2 family (tiny random video models of the real classes, saved and reloaded): anchors, tracked
frames, re-anchoring, memory bounded over a long clip, sessions independent; and the whole path
with the shipped demo model deciding keyframes on a clip of a moving disc that leaves the frame
and comes back — every frame once, DiT forwards only at keyframes, resume and cancel, the CLI.
Random SAM weights give meaningless masks: structure is asserted, not quality."""

import json

import numpy as np
import pytest
from PIL import Image

from grounding.pipeline.propagate import Keyframes, decide
from grounding.pipeline.video import VideoConfig, iter_video, keyframe_of
from grounding.segment.prompts import mask_iou
from synthetic.segmenters import FAMILIES

DEMO = "models/shapes-demo"


def leaving_clip(n: int = 24, w: int = 96, h: int = 64) -> list[Image.Image]:
    """A red disc moving right 8 px a frame past a static blue square; it leaves on the right
    (frames 12–13 hold no disc) and comes back from the left."""
    yy, xx = np.mgrid[:h, :w]
    frames = []
    for t in range(n):
        arr = np.full((h, w, 3), 225, np.uint8)
        cx = -12 + (26 + 8 * t) % 132
        arr[(xx - cx) ** 2 + (yy - 22) ** 2 < 64] = (220, 30, 30)
        arr[(abs(xx - 70) < 7) & (abs(yy - 46) < 7)] = (30, 40, 220)
        frames.append(Image.fromarray(arr))
    return frames


# --- the schedule and the rule -------------------------------------------------------------------
def test_keyframe_schedule():
    k = Keyframes(every=4, search_every=2)
    assert k.wants_map(0, None)  # nothing anchored, never mapped: search
    k.last_map = 0
    assert not k.wants_map(1, None) and k.wants_map(2, None)  # searching every 2 frames
    k.last_map, k.tracked_present = 2, True  # anchored: the tracker reports on every frame
    assert [k.wants_map(t, True) for t in (3, 4, 5, 6)] == [False, False, False, True]  # every 4
    assert k.wants_map(3, False)  # the tracker's presence flipped: checked at once
    with pytest.raises(ValueError, match="≥ 1"):
        Keyframes(every=0)


def test_the_iou_rule():
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    b = np.roll(a, 1, axis=1)  # IoU 12 / 20 = 0.6
    assert mask_iou(a, b) == pytest.approx(0.6) and mask_iou(a & False, b & False) == 0.0  # the shared helper
    assert decide(True, a, True, b, 0.5) == "agree"
    assert decide(True, a, True, b, 0.7) == "anchor"  # they disagree: the map's mask re-anchors
    assert decide(True, a, False, b, 0.5) == "anchor"  # the tracker lost it
    assert decide(False, a, True, b, 0.5) == "absent"  # the map decides presence
    # the keyframe: the most confident map-decided frame, the first on ties
    assert keyframe_of([(False, 0.99), (True, 0.2), (True, 0.5), (True, 0.5)]) == 2 and keyframe_of([]) == 0


def test_video_config_checks():
    with pytest.raises(ValueError, match="keyframe_every"):
        VideoConfig(propagate=True, keyframe_every=0)
    with pytest.raises(ValueError, match="reanchor_iou"):
        VideoConfig(propagate=True, reanchor_iou=1.5)
    with pytest.raises(ValueError, match="maps='clip'"):
        VideoConfig(propagate=True, maps="clip")


# --- the tracker of each family ------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(sam_folders):
    return sam_folders


@pytest.mark.parametrize("family", FAMILIES)
def test_tracker_session(folders, family):
    from grounding.segment.segmenters import make_segmenter

    seg = make_segmenter(str(folders[family]))
    tracker = seg.tracker()
    assert seg.tracker() is tracker  # loaded once per segmenter
    assert tracker.model.vision_encoder is seg.model.vision_encoder  # one image encoder in memory
    frames = [np.asarray(f) for f in leaving_clip(30, 80, 60)]
    anchor = np.zeros((60, 80), bool)
    anchor[10:30, 20:50] = True
    s = tracker.start(anchors=2)
    with pytest.raises(ValueError, match="anchor"):
        s.step(0, frames[0])  # nothing to track yet
    first = s.step(0, frames[0], anchor=anchor)
    assert mask_iou(first.mask, anchor) > 0.9 and first.present  # an anchor is the frame's mask (resampled)
    bound = tracker.memory_frames + 1
    for t in range(1, 30):
        track = s.step(t, frames[t], anchor=anchor if t in (10, 20) else None)
        assert track.mask.shape == (60, 80) and track.mask.dtype == bool and 0.0 <= track.probability <= 1.0
        held = s.held()
        assert held["frames"] == 1 and held["tracked"] <= bound and held["anchors"] <= 2, held
    assert s.held()["anchors"] == 2  # frames 0, 10, 20 anchored; the oldest dropped
    again = s.reanchor(29, anchor)  # a tracked frame turned into a conditioning frame
    assert mask_iou(again.mask, anchor) > 0.9 and 29 in s.session.output_dict_per_obj[0]["cond_frame_outputs"]
    # a second session starts empty and, given the same frames, tracks the same masks
    s2 = tracker.start()
    s3 = tracker.start()
    for t in range(4):
        a, b = (x.step(t, frames[t], anchor=anchor if t == 0 else None) for x in (s2, s3))
        assert np.array_equal(a.mask, b.mask) and a.probability == b.probability


def test_a_segmenter_without_a_video_model_is_refused(flux_grounder):
    with pytest.raises(ValueError, match="SAM 2-family segmenter"):
        list(iter_video(flux_grounder, leaving_clip(2), "the red circle", VideoConfig(propagate=True)))


# --- the whole path, the demo model deciding keyframes -------------------------------------------
@pytest.fixture(scope="module")
def demo(folders):
    from grounding import Grounder

    return Grounder.from_pretrained(DEMO, segmenter=str(folders["sam2"]), device="cpu")


def _run(g, frames, **kw):
    cfg = VideoConfig(propagate=True, keyframe_every=6)
    return list(iter_video(g, frames, "the red circle", cfg, **kw))


def test_propagation_maps_only_keyframes(demo):
    frames = leaving_clip()
    out = _run(demo, frames)
    assert [f.index for f in out] == list(range(len(frames)))  # every frame once, in order
    assert out[0].dit and out[0].source == "map" and out[0].present  # found on the first frame
    dit = [f.index for f in out if f.dit]
    assert len(dit) < len(frames) / 2, dit  # maps at keyframes only (per-frame maps: one per frame)
    anchored = True
    for f, nxt in zip(out, out[1:]):
        if f.dit and not f.present:  # the map said absent: the anchor is dropped, search resumes
            anchored = False
            assert nxt.dit
        if f.present:
            anchored = True
        if not f.dit:
            assert f.source == "tracked" and f.points.shape == (0, 2) and not f.heatmap.any()
            assert f.timings_ms["tracker"] > 0
    assert anchored
    # the disc is gone in frames 12–13: the keyframe there (0, 6, 12) is the demo model's "absent",
    # and once it is back the map finds it again
    assert out[12].dit and not out[12].present and not out[13].present
    assert any(f.dit and f.present for f in out[14:17])
    gaps = np.diff(dit)
    assert gaps.max() <= 6  # at least every keyframe_every frames
    for f in out:
        assert f.mask.shape == (64, 96) and (f.present or not f.mask.any())
    # deterministic: the same clip, the same frames
    again = _run(demo, frames)
    assert all(np.array_equal(a.mask, b.mask) and a.source == b.source for a, b in zip(out, again))


def test_propagation_resumes_and_cancels(demo):
    frames = leaving_clip(16)
    full = _run(demo, frames)
    start = 9
    resumed = _run(demo, frames, start=start, prev_mask=full[start - 1].mask)
    assert [f.index for f in resumed] == list(range(start, 16))  # the rest, once each
    if full[start - 1].present:  # re-anchored on the last recorded mask: no search from scratch
        assert not resumed[0].dit or resumed[0].index - (start - 1) >= 6
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 5

    assert [f.index for f in _run(demo, frames, cancel=cancel)] == list(range(5))


def test_cli_segment_video_propagate(folders, tmp_path):
    from grounding.cli import main

    clip = tmp_path / "clip"
    clip.mkdir()
    for i, f in enumerate(leaving_clip(10)):
        f.save(clip / f"{i:03d}.png")
    out = tmp_path / "out"
    args = ["segment-video", "--model", DEMO, "--segmenter", str(folders["edgetam"]), str(clip), "the red circle"]
    assert main([*args, "--out", str(out), "--propagate", "--keyframe-every", "4"]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert len(doc["frames"]) == 10 and len(list((out / "masks").glob("*.png"))) == 10
    assert (out / "overlay.mp4").stat().st_size > 0
    assert {f["source"] for f in doc["frames"]} <= {"map", "tracked", "search"}
    assert doc["frames"][0]["dit"] and sum(f["dit"] for f in doc["frames"]) < 10
    assert doc["frames"][doc["keyframe"]]["dit"]  # the keyframe is a frame a map decided


def test_eval_davis_propagate_scores_the_fixture(folders, tmp_path):
    from eval.cli import main as eval_main
    from fixtures import write_davis_fixture

    root = write_davis_fixture(tmp_path / "davis", n_frames=6)
    out = tmp_path / "run"
    args = ["davis", "--data-root", root, "--model", DEMO, "--segmenter", folders["sam3_tracker"], "--out", out]
    assert eval_main([str(a) for a in args] + ["--propagate", "--keyframe-every", "3"]) == 0
    summ = json.loads((out / "summary.json").read_text())
    assert summ["n"] == 5 and summ["scored"] == 5 and 0.0 <= summ["J&F"] <= 1.0
    assert summ["config"]["propagate"] is True  # part of the run's identity: a resume must match it
    assert len(list((out / "Annotations" / "red-disc").rglob("*.png"))) == 30
    # without a SAM 2-family segmenter the run refuses before the first video
    assert (
        eval_main(["davis", "--data-root", str(root), "--model", DEMO, "--out", str(tmp_path / "r2"), "--propagate"])
        == 2
    )
