"""Video diffusion transformers (Wan 2.x) on a tiny random ``WanPipeline`` of the real diffusers
classes (UMT5, the causal Wan VAE, ``WanTransformer3DModel``), saved and reloaded offline: the
text path is the pipeline's own, the cross-attention capture is exact and leaves the output
bit-identical, latent frames map back to the source frames the VAE folded into them, and clip
maps run through ``segment_video``, the CLI and the Ref-DAVIS runner."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import scene
from fixtures import write_davis_fixture
from test_backbones import RecordSDPA
from grounding.backends import AttentionStore, load_backend, pipeline_class_name
from grounding.backends.base import PADDING
from grounding.backends.wan import clip_length, latent_frames
from grounding.pipeline.video import VideoConfig, clip_windows

MAX_LEN = 32


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    from grounding.backends.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("wan") / "wan", "wan")


@pytest.fixture(scope="module")
def wan(wan_dir):
    return load_backend(wan_dir)


@pytest.fixture(scope="module")
def wan_grounder(wan_dir):
    from grounding import Grounder

    return Grounder.from_pretrained(wan_dir, device="cpu")


def _clip(n: int, seed: int = 0) -> list[Image.Image]:
    return [scene(64, 48, seed=seed + i) for i in range(n)]


def test_builds_offline_and_is_picked_from_model_index(wan_dir, wan):
    assert pipeline_class_name(wan_dir) == "WanPipeline" and wan.arch == "wan" and wan.video
    assert all(not m.training for m in wan.pipe.components.values() if isinstance(m, torch.nn.Module))
    assert wan.block_names == ["blocks.0", "blocks.1"] and wan.temporal == 4 and wan.patch == 16


def test_text_path_is_the_pipelines_own(wan):
    prompt = "the red circle on the left, next to a tall tree"
    seq = wan.tokenize([prompt], MAX_LEN)[0]
    ours = wan.encode_prompts([seq])["embeds"]
    with torch.no_grad():
        theirs = wan.pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=MAX_LEN,
                                        device="cpu")[0]
    assert ours.shape == theirs.shape and torch.equal(ours, theirs)
    assert float(ours[0, seq.roles == PADDING].abs().max()) == 0.0  # the pipeline's zero padding


def test_latent_frames_follow_the_vaes_temporal_layout(wan):
    """First frame alone, then 4 per latent frame — checked on the VAE itself: changing the frames
    of latent frame k changes latent k and (causal VAE) later ones, never earlier ones."""
    assert latent_frames(9, 4) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]] and latent_frames(1, 4) == [[0]]
    assert clip_length(6, 4) == 9 and clip_length(1, 4) == 1 and clip_length(9, 4) == 9
    with pytest.raises(ValueError, match="4·k \\+ 1"):
        latent_frames(8, 4)
    size = wan.input_size(64, 48, 64)
    frames = _clip(9)
    base = wan.encode_pixels([frames], size)
    assert base.shape[2] == 3
    for k, group in enumerate(latent_frames(9, 4)):
        changed = list(frames)
        for f in group:
            changed[f] = scene(64, 48, seed=100 + f)
        z = wan.encode_pixels([changed], size)
        diff = (z - base).abs().amax(dim=(0, 1, 3, 4))
        assert k == 0 or float(diff[:k].max()) == 0.0, (k, diff)
        assert float(diff[k]) > 0.0, (k, diff)


@torch.no_grad()
def test_cross_attention_capture_is_exact_and_output_bit_identical(wan):
    """Every captured block's read-out equals a float64 softmax over all the keys the model
    attends to (zero padding included), on a 9-frame clip; the output is untouched."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    seq = wan.tokenize(["the red circle on the left"], MAX_LEN)[0]
    size = wan.input_size(64, 48, 64)
    latents = wan.encode_pixels([_clip(9)], size)
    noisy = 0.7 * latents + 0.3 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    cond = wan.encode_prompts([seq])
    columns = np.flatnonzero(seq.roles != PADDING)
    grid = wan.grid(noisy)
    rec = RecordSDPA()
    hooks = []
    for n in wan.block_names:
        m = wan.attention_module(n)
        hooks.append(m.register_forward_pre_hook(lambda _m, _a, n=n: setattr(rec, "block", n)))
        hooks.append(m.register_forward_hook(lambda *_: setattr(rec, "block", None)))
    with rec:
        stock = wan.forward(noisy, 0.3, cond, 1.0)
    for h in hooks:
        h.remove()
    assert [c[0] for c in rec.calls] == wan.block_names  # one cross-attention per block
    store = AttentionStore(layout=lambda block, q, k: wan.layout(block, q, k, len(seq), grid[0] * grid[1]),
                           columns=torch.from_numpy(columns))
    active = _AttentionBackendRegistry._active_backend
    with wan.capturing(store, wan.block_names):
        ours = wan.forward(noisy, 0.3, cond, 1.0)
    assert torch.equal(stock, ours) and _AttentionBackendRegistry._active_backend == active
    for name, q, k, mask in rec.calls:
        assert mask is None and k.shape[2] == MAX_LEN  # Wan masks nothing: every padding key is attended
        full = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        ref = full[..., torch.from_numpy(columns)]
        got = store.maps[name][0].double()
        assert got.shape == ref.shape == (1, q.shape[1], grid[0] * grid[1], len(columns))
        assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_capture_clip_is_the_clip_capture_split_by_latent_frame(wan):
    seq = wan.tokenize(["blue square"], MAX_LEN)[0]
    size = wan.input_size(64, 48, 64)
    frames = _clip(5)
    cap, groups = wan.capture_clip(frames, seq, size, (0.3, 0.5), seed=1)
    whole = wan.capture([frames], [seq], size, (0.3, 0.5), seed=1)
    rows, cols = cap.grid
    assert groups == [[0], [1, 2, 3, 4]] and cap.probs.shape[2] == 2 and (rows, cols) == (3, 4)
    for t in range(2):
        assert torch.equal(cap.sample(t), whole.sample(0)[..., t * rows * cols:(t + 1) * rows * cols, :])
    single = wan.capture([frames[0]], [seq], size, (0.3,), seed=1)  # an image is a one-frame clip
    assert single.grid == (3, 4)


def test_clip_windows_give_every_frame_once():
    for n, size, overlap in ((11, 5, 2), (17, 9, 4), (4, 9, 4), (9, 9, 0), (10, 5, 1)):
        got = []
        for window, lo, hi in clip_windows(iter([(i, None) for i in range(n)]), size, overlap):
            assert len(window) <= size
            got += [i for i, _ in window[lo:hi]]
        assert got == list(range(n)), (n, size, overlap, got)


def test_segment_video_with_clip_maps(wan_grounder):
    frames = _clip(11)
    clip = wan_grounder.segment_video(frames, "the red circle", maps="clip")
    assert [f.index for f in clip.frames] == list(range(11))
    assert all(f.mask.shape == (48, 64) and np.isfinite(f.heatmap).all() for f in clip.frames)
    again = wan_grounder.segment_video(frames, "the red circle", maps="clip")
    assert all(np.array_equal(a.heatmap, b.heatmap) for a, b in zip(clip.frames, again.frames))  # deterministic
    small = wan_grounder.segment_video(frames, "the red circle", VideoConfig(maps="clip", clip_frames=5,
                                                                             clip_overlap=2))
    assert len(small.frames) == 11
    per_frame = wan_grounder.segment_video(frames, "the red circle")  # the frame path on a video DiT
    assert len(per_frame.frames) == 11
    r = wan_grounder.segment(frames[0], "the red circle")
    assert r.mask.shape == (48, 64)
    with pytest.raises(ValueError, match="4·k \\+ 1"):
        wan_grounder.segment_video(frames, "the red circle", VideoConfig(maps="clip", clip_frames=8))


def test_clip_maps_need_a_video_dit(flux_grounder):
    with pytest.raises(ValueError, match="video diffusion transformer"):
        flux_grounder.segment_video(_clip(3), "the red circle", maps="clip")


def test_cli_and_davis_runner_with_clip_maps(wan_dir, tmp_path):
    from eval.cli import main as eval_main
    from grounding.cli import main
    from grounding.pipeline.video import OverlayWriter

    video = tmp_path / "clip.mp4"
    w = OverlayWriter(video, 8)
    for f in _clip(7):
        w.write(f)
    w.close()
    out = tmp_path / "out"
    assert main(["segment-video", "--model", str(wan_dir), str(video), "the dog", "--out", str(out),
                 "--maps", "clip", "--clip-frames", "5", "--clip-overlap", "2"]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert len(doc["frames"]) == 7 and (out / "overlay.mp4").stat().st_size > 0
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 7 and Image.open(masks[0]).mode == "P"  # DAVIS palette
    root = write_davis_fixture(tmp_path / "davis")
    run = tmp_path / "run"
    assert eval_main(["davis", "--data-root", str(root), "--model", str(wan_dir), "--out", str(run),
                      "--maps", "clip"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n"] == 5 and summary["scored"] == 5 and 0.0 <= summary["J&F"] <= 1.0
    assert json.loads((run / "run.json").read_text())["config"]["video_maps"] == "clip"
