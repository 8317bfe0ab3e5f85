"""Video segmentation: temporal aggregation and identity on constructed maps; the streaming
pipeline, frame readers, outputs and bad files on real models."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import moving_video, run_module
from grounding.pipeline.frames import read_frames
from grounding.pipeline.motion import aggregate, translate
from grounding.pipeline.video import VideoConfig, iter_video
from grounding.pipeline.video_output import OverlayWriter
from grounding.segment.prompts import prompts_from_map
from grounding.segment.segmenters import MapSegmenter


def test_aggregate_weights_and_edges():
    maps = [torch.zeros(4) for _ in range(5)]
    for i, m in enumerate(maps):
        m[i % 4] = 1.0
    out = aggregate(maps, 2, window=1, decay=0.5)  # frames 1, 2, 3 with weights .5, 1, .5
    assert torch.allclose(out, torch.tensor([0, 0.25, 0.5, 0.25]))
    edge = aggregate(maps, 0, window=2, decay=0.5)  # frames 0, 1, 2 exist: weights 1, .5, .25
    assert torch.allclose(edge, torch.tensor([1, 0.5, 0.25, 0]) / 1.75)
    assert torch.equal(aggregate(maps, 3, window=0, decay=0.5), maps[3])


def test_one_bad_frame_does_not_flip_the_referent():
    good = torch.zeros(16)
    good[5] = 1.0
    bad = torch.zeros(16)
    bad[12] = 1.2  # one frame points elsewhere, a little more strongly
    seq = [good, good, bad, good, good]
    assert int(aggregate(seq, 2, window=2, decay=0.6).argmax()) == 5
    assert int(aggregate(seq, 2, window=0, decay=0.6).argmax()) == 12


def test_motion_compensation_follows_a_moving_referent_past_a_static_lookalike():
    grid = (8, 12)
    frames = []
    for t in range(5):
        m = torch.zeros(grid)
        m[4, 2 + 2 * t] = 1.0  # the referent, 2 tokens right per frame
        m[1, 10] = 0.8  # a static look-alike, a little weaker in every frame
        frames.append(m.reshape(-1))
    plain = aggregate(frames, 2, window=2, decay=0.6)
    assert divmod(int(plain.argmax()), 12) == (1, 10)  # uncompensated, the static one adds up
    moved = aggregate(frames, 2, window=2, decay=0.6, grid=grid, motion=2)
    assert divmod(int(moved.argmax()), 12) == (4, 6)  # where the referent is in the centre frame
    assert float(moved.max()) == pytest.approx(1 / 1.8)  # every frame's referent laid onto it
    short = aggregate(frames, 2, window=2, decay=0.6, grid=grid, motion=1)  # reach 1 token per frame
    assert divmod(int(short.argmax()), 12) == (1, 10)
    # a static map is left where it is; a one-frame outlier farther than the reach cannot pull the rest
    good, bad = torch.zeros(grid), torch.zeros(grid)
    good[2, 2], bad[6, 10] = 1.0, 1.2
    seq = [good.reshape(-1)] * 2 + [bad.reshape(-1)] + [good.reshape(-1)] * 2
    assert torch.equal(aggregate([good.reshape(-1)] * 3, 1, 1, 0.6, grid, 2), good.reshape(-1))
    assert divmod(int(aggregate(seq, 2, 2, 0.6, grid, 2).argmax()), 12) == (2, 2)


def test_region_choice_keeps_identity_by_overlap():
    heat = np.zeros((20, 40), dtype=np.float32)
    heat[5:15, 2:12] = 0.9  # region A, overlapping the previous mask
    heat[5:15, 26:36] = 1.0  # region B, slightly brighter: the peak
    prev = np.zeros_like(heat, dtype=bool)
    prev[5:15, 3:13] = True
    assert prompts_from_map(heat, 0.5).region[:, 30].any()  # without history: the peak region
    kept = prompts_from_map(heat, 0.5, prev_mask=prev)
    assert kept.region[:, 5].any() and not kept.region[:, 30].any()
    assert kept.region[int(kept.points[0][1]), int(kept.points[0][0])]  # the positive point moved with it
    assert MapSegmenter()(None, heat, kept).mask[:, 5].any()
    assert prompts_from_map(heat, 0.5, prev_mask=prev, identity_weight=0).region[:, 30].any()
    heat[5:15, 2:12] = 0.3  # a faint region (under half the peak's mass) cannot take over
    assert prompts_from_map(heat, 0.2, prev_mask=prev).region[:, 30].any()


def _write_video(path: Path, n: int = 6) -> list:
    frames, labels = moving_video(n, 96, 64)
    w = OverlayWriter(path, 8)
    for f in frames:
        w.write(f)
    w.close()
    return labels


def test_readers_and_bad_files(tmp_path):
    labels = _write_video(tmp_path / "v.mp4")
    frames = list(read_frames(tmp_path / "v.mp4"))
    assert len(frames) == len(labels) and frames[0].size == (96, 64)
    zpath = tmp_path / "frames.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for i, f in enumerate(moving_video(3)[0]):
            buf = __import__("io").BytesIO()
            f.save(buf, format="PNG")
            z.writestr(f"f/{i:05d}.png", buf.getvalue())
    assert len(list(read_frames(zpath))) == 3
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match="cannot read video"):
        list(read_frames(tmp_path / "junk.mp4"))
    with pytest.raises(FileNotFoundError):
        list(read_frames(tmp_path / "missing.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image frames"):
        list(read_frames(tmp_path / "empty"))
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as z:
        z.writestr("00000.png", b"garbage")
    with pytest.raises(ValueError, match="cannot read frame"):
        list(read_frames(bad_zip))


def test_streaming_pipeline_on_a_tiny_model(flux_grounder, tmp_path):
    _write_video(tmp_path / "v.mp4", 7)
    out = list(iter_video(flux_grounder, tmp_path / "v.mp4", "the red circle", VideoConfig(batch_frames=3)))
    assert [f.index for f in out] == list(range(7))
    for f in out:
        assert f.mask.shape == (64, 96) and f.heatmap.shape == (64, 96) and isinstance(f.present, bool)
    # batching frames does not change the result
    one = list(iter_video(flux_grounder, tmp_path / "v.mp4", "the red circle", VideoConfig(batch_frames=1)))
    for a, b in zip(out, one):
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)
    r = flux_grounder.segment_video(tmp_path / "v.mp4", "the red circle")
    assert len(r.frames) == 7 and 0 <= r.keyframe < 7 and r.frames[0].image is None
    with pytest.raises(ValueError, match="no content words"):
        flux_grounder.segment_video(tmp_path / "v.mp4", "the of")
    # cancel stops the stream between batches
    calls = []
    stopped = list(
        iter_video(
            flux_grounder,
            tmp_path / "v.mp4",
            "red circle",
            VideoConfig(batch_frames=2),
            cancel=lambda: len(calls.append(1) or calls) > 2,
        )
    )
    assert len(stopped) < 7


def test_sam_video_path_uses_mask_prompts(tiny_flux_dir, sam_tiny_path, tmp_path):
    from grounding import Grounder

    g = Grounder.from_pretrained(tiny_flux_dir, segmenter=str(sam_tiny_path), device="cpu")
    frames, _ = moving_video(4, 96, 64)
    with_prompt = g.segment_video(frames, "the red circle", VideoConfig(mask_prompt=True))
    without = g.segment_video(frames, "the red circle", VideoConfig(mask_prompt=False, identity_weight=0))
    assert len(with_prompt.frames) == len(without.frames) == 4
    np.testing.assert_array_equal(with_prompt.frames[0].mask, without.frames[0].mask)  # no history yet


def test_cli_segment_video(tmp_path, tiny_flux_dir):
    _write_video(tmp_path / "v.mp4", 5)
    out = tmp_path / "out"
    run_module(
        "grounding", "segment-video", "--model", tiny_flux_dir, tmp_path / "v.mp4", "the red circle", "--out", out
    )
    doc = json.loads((out / "result.json").read_text())
    assert len(doc["frames"]) == 5 and doc["fps"] == pytest.approx(8.0)
    pngs = sorted((out / "masks").glob("*.png"))
    assert [x.name for x in pngs] == [f"{i:05d}.png" for i in range(5)]
    im = Image.open(pngs[0])
    assert im.mode == "P" and im.size == (96, 64) and set(np.unique(np.asarray(im))) <= {0, 1}
    assert len(list(read_frames(out / "overlay.mp4"))) == 5
    p = run_module(
        "grounding",
        "segment-video",
        "--model",
        tiny_flux_dir,
        tmp_path / "missing.mp4",
        "red circle",
        "--out",
        out,
        check=False,
    )
    assert p.returncode == 2 and "not found" in p.stderr


def test_translate_moves_and_clears():
    m = torch.arange(6.0).reshape(2, 3)
    assert translate(m, 0, 1).tolist() == [[0, 0, 1], [0, 3, 4]]
    assert translate(m, -1, 0).tolist() == [[3, 4, 5], [0, 0, 0]]
    assert not translate(m, 3, 0).any() and not translate(m, 0, -5).any()  # moved off the grid
