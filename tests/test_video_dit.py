"""Video diffusion transformers on tiny random pipelines of the real diffusers classes, saved and
reloaded offline: Wan 2.x (``WanPipeline``: UMT5, the causal Wan VAE, cross-attention) and
HunyuanVideo (``HunyuanVideoPipeline``: Llama behind its cropped system template + CLIP, the
causal HunyuanVideo VAE, joint attention with a text padding mask). Per backbone: the text path is
the pipeline's own, the capture is exact (masks honoured) and leaves the output bit-identical,
latent frames map back to the source frames the VAE folded into them, and clip maps run through
``segment_video``; the CLI and the Ref-DAVIS runner take ``--maps clip``."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import RecordSDPA, save_tiny_models, scene, write_davis_fixture
from grounding.backends import AttentionStore, load_backend, pipeline_class_name
from grounding.backends.sequences import PADDING, TEXT
from grounding.backends.video_dit import clip_length, latent_frames
from grounding.pipeline.video import VideoConfig, clip_windows

MAX_LEN = 32
ARCHS = ["wan", "hunyuanvideo"]
PIPELINES = {"wan": "WanPipeline", "hunyuanvideo": "HunyuanVideoPipeline"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("video-dits"), ARCHS)


@pytest.fixture(scope="module")
def backends(model_dirs):
    return {a: load_backend(d) for a, d in model_dirs.items()}


@pytest.fixture(scope="module")
def wan_dir(model_dirs):
    return model_dirs["wan"]


@pytest.fixture(scope="module")
def grounders(model_dirs):
    from grounding import Grounder

    return {a: Grounder.from_pretrained(d, device="cpu") for a, d in model_dirs.items()}


def _clip(n: int, seed: int = 0) -> list[Image.Image]:
    return [scene(64, 48, seed=seed + i) for i in range(n)]


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_offline_and_is_picked_from_model_index(arch, model_dirs, backends):
    b = backends[arch]
    assert pipeline_class_name(model_dirs[arch]) == PIPELINES[arch] and b.arch == arch and b.video
    assert all(not m.training for m in b.pipe.components.values() if isinstance(m, torch.nn.Module))
    assert b.temporal == 4
    if arch == "wan":
        assert b.block_names == ["blocks.0", "blocks.1"] and b.patch == 16
    else:
        assert b.block_names == ["transformer_blocks.0", "single_transformer_blocks.0"] and b.patch == 8


@pytest.mark.parametrize("arch", ARCHS)
def test_text_path_is_the_pipelines_own(arch, backends):
    b = backends[arch]
    prompt = "the red circle on the left, next to a tall tree"
    seq = b.tokenize([prompt], MAX_LEN)[0]
    ours = b.encode_prompts([seq])
    with torch.no_grad():
        if arch == "wan":
            theirs = b.pipe.encode_prompt(
                prompt, do_classifier_free_guidance=False, max_sequence_length=MAX_LEN, device="cpu"
            )[0]
            assert float(ours["embeds"][0, seq.roles == PADDING].abs().max()) == 0.0  # the pipeline's zero padding
        else:
            theirs, pooled, mask = b.pipe.encode_prompt(prompt, max_sequence_length=MAX_LEN, device="cpu")
            assert torch.equal(ours["pooled"], pooled) and torch.equal(ours["mask"], mask.long())
    assert ours["embeds"].shape == theirs.shape and torch.equal(ours["embeds"], theirs)
    words = [b.pipe.tokenizer.decode([int(i)]).strip() for i, r in zip(seq.ids, seq.roles) if r == TEXT]
    assert "".join(words).replace(" ", "") == prompt.replace(" ", "")  # the prompt's own tokens, whole
    if arch == "hunyuanvideo":  # the 95 cropped positions are exactly the system message and the user header
        assert seq.roles[0] == TEXT and b.pipe.tokenizer.decode([int(seq.ids[0])]) == "the"


@pytest.mark.parametrize("arch", ARCHS)
def test_latent_frames_follow_the_vaes_temporal_layout(arch, backends):
    """First frame alone, then 4 per latent frame — checked on the VAE itself: the number of
    latent frames, and (Wan's strictly causal VAE) changing the frames of latent frame k changes
    latent k and later ones, never earlier ones."""
    assert latent_frames(9, 4) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]] and latent_frames(1, 4) == [[0]]
    assert clip_length(6, 4) == 9 and clip_length(1, 4) == 1 and clip_length(9, 4) == 9
    with pytest.raises(ValueError, match="4·k \\+ 1"):
        latent_frames(8, 4)
    b = backends[arch]
    size = b.input_size(64, 48, 64)
    for n in (1, 5, 9):  # the VAE makes as many latent frames as latent_frames says
        assert b.encode_pixels([_clip(n)], size).shape[2] == len(latent_frames(n, b.temporal))
    if arch == "hunyuanvideo":
        return  # its VAE's GroupNorm spans time, so every latent frame sees a little of every frame
    frames = _clip(9)
    base = b.encode_pixels([frames], size)
    for k, group in enumerate(latent_frames(9, 4)):
        changed = list(frames)
        for f in group:
            changed[f] = scene(64, 48, seed=100 + f)
        z = b.encode_pixels([changed], size)
        diff = (z - base).abs().amax(dim=(0, 1, 3, 4))
        assert k == 0 or float(diff[:k].max()) == 0.0, (k, diff)
        assert float(diff[k]) > 0.0, (k, diff)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_capture_is_exact_and_output_bit_identical(arch, backends):
    """Every captured block's read-out equals a float64 softmax over the keys the model really
    attends to — Wan: all of them, its zero padding included; HunyuanVideo: its mask hides the
    text padding —, on a 9-frame clip; the output is untouched."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    wan = backends[arch]
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
    store = AttentionStore(
        layout=lambda block, q, k: wan.layout(block, q, k, len(seq), grid[0] * grid[1]),
        columns=torch.from_numpy(columns),
    )
    active = _AttentionBackendRegistry._active_backend
    with wan.capturing(store, wan.block_names):
        ours = wan.forward(noisy, 0.3, cond, 1.0)
    assert torch.equal(stock, ours) and _AttentionBackendRegistry._active_backend == active
    n_img = grid[0] * grid[1]
    for name, q, k, mask in rec.calls:
        lay = wan.layout(name, q.shape[2], k.shape[2], len(seq), n_img)
        logits = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
        if arch == "wan":
            assert mask is None and k.shape[2] == MAX_LEN  # Wan masks nothing: every padding key is attended
        else:
            assert mask is not None and not bool(mask.all())  # the text padding is masked
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
        full = torch.softmax(logits, dim=-1)
        ref = full[:, :, lay.image][..., lay.text.start + torch.from_numpy(columns)]
        got = store.maps[name][0].double()
        assert got.shape == ref.shape == (1, q.shape[1], grid[0] * grid[1], len(columns))
        assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_clip_is_the_clip_capture_split_by_latent_frame(arch, backends):
    wan = backends[arch]
    seq = wan.tokenize(["blue square"], MAX_LEN)[0]
    size = wan.input_size(64, 48, 64)
    frames = _clip(5)
    cap, groups = wan.capture_clip(frames, seq, size, (0.3, 0.5), seed=1)
    whole = wan.capture([frames], [seq], size, (0.3, 0.5), seed=1)
    rows, cols = cap.grid
    assert groups == [[0], [1, 2, 3, 4]] and cap.probs.shape[2] == 2
    assert (rows, cols) == ((3, 4) if arch == "wan" else (6, 8))
    for t in range(2):
        assert torch.equal(cap.sample(t), whole.sample(0)[..., t * rows * cols : (t + 1) * rows * cols, :])
    single = wan.capture([frames[0]], [seq], size, (0.3,), seed=1)  # an image is a one-frame clip
    assert single.grid == (rows, cols)


def test_clip_windows_give_every_frame_once():
    for n, size, overlap in ((11, 5, 2), (17, 9, 4), (4, 9, 4), (9, 9, 0), (10, 5, 1)):
        got = []
        for window, lo, hi in clip_windows(iter([(i, None) for i in range(n)]), size, overlap):
            assert len(window) <= size
            got += [i for i, _ in window[lo:hi]]
        assert got == list(range(n)), (n, size, overlap, got)


@pytest.mark.parametrize("arch", ARCHS)
def test_segment_video_with_clip_maps(arch, grounders):
    wan_grounder = grounders[arch]
    frames = _clip(11)
    clip = wan_grounder.segment_video(frames, "the red circle", maps="clip")
    assert [f.index for f in clip.frames] == list(range(11))
    assert all(f.mask.shape == (48, 64) and np.isfinite(f.heatmap).all() for f in clip.frames)
    again = wan_grounder.segment_video(frames, "the red circle", maps="clip")
    assert all(np.array_equal(a.heatmap, b.heatmap) for a, b in zip(clip.frames, again.frames))  # deterministic
    small = wan_grounder.segment_video(
        frames, "the red circle", VideoConfig(maps="clip", clip_frames=5, clip_overlap=2)
    )
    assert len(small.frames) == 11
    items = wan_grounder.map_stage.clip(frames[:9], "the red circle", wan_grounder.config)
    for group in latent_frames(9, 4):  # each source frame reads the map of the latent frame it was folded into
        assert all(torch.equal(items[f].map, items[group[0]].map) for f in group)
        assert all(items[f].image is not items[group[0]].image for f in group[1:])
    assert not torch.equal(items[0].map, items[1].map)
    from grounding.pipeline.video import iter_video

    resumed = list(
        iter_video(
            wan_grounder, frames, "the red circle", VideoConfig(maps="clip", clip_frames=5, clip_overlap=2), start=6
        )
    )
    assert [f.index for f in resumed] == list(range(6, 11))  # resumed at frame 6, each later frame once
    per_frame = wan_grounder.segment_video(frames, "the red circle")  # the frame path on a video DiT
    assert len(per_frame.frames) == 11
    r = wan_grounder.segment(frames[0], "the red circle")
    assert r.mask.shape == (48, 64)
    with pytest.raises(ValueError, match="4·k \\+ 1"):
        wan_grounder.segment_video(frames, "the red circle", VideoConfig(maps="clip", clip_frames=8))


def test_clip_maps_need_a_video_dit(flux_grounder):
    with pytest.raises(ValueError, match="video diffusion transformer"):
        flux_grounder.segment_video(_clip(3), "the red circle", maps="clip")


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_tiny_model_then_segment_video_with_clip_maps(arch, tmp_path):
    """``python -m grounding tiny-model --arch A`` then ``segment-video --maps clip``: DAVIS-palette
    masks, overlay.mp4 and result.json (through ``grounding.cli.main``, what ``python -m grounding`` runs)."""
    from grounding.cli import main
    from grounding.pipeline.video_output import OverlayWriter

    model = tmp_path / "m"
    assert main(["tiny-model", "--arch", arch, str(model)]) == 0
    video = tmp_path / "clip.mp4"
    w = OverlayWriter(video, 8)
    for f in _clip(7):
        w.write(f)
    w.close()
    out = tmp_path / "out"
    assert (
        main(
            [
                "segment-video",
                "--model",
                str(model),
                str(video),
                "the dog",
                "--out",
                str(out),
                "--maps",
                "clip",
                "--clip-frames",
                "5",
                "--clip-overlap",
                "2",
            ]
        )
        == 0
    )
    doc = json.loads((out / "result.json").read_text())
    assert len(doc["frames"]) == 7 and (out / "overlay.mp4").stat().st_size > 0
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 7 and Image.open(masks[0]).mode == "P"  # DAVIS palette


def test_davis_runner_with_clip_maps(wan_dir, tmp_path):
    from eval.cli import main as eval_main

    root = write_davis_fixture(tmp_path / "davis")
    run = tmp_path / "run"
    assert (
        eval_main(["davis", "--data-root", str(root), "--model", str(wan_dir), "--out", str(run), "--maps", "clip"])
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n"] == 5 and summary["scored"] == 5 and 0.0 <= summary["J&F"] <= 1.0
    assert json.loads((run / "run.json").read_text())["config"]["video_maps"] == "clip"
    assert len(list((run / "Annotations" / "red-disc").rglob("*.png"))) == 15


@torch.no_grad()
def test_wan22_reads_each_noise_level_from_the_expert_the_pipeline_runs(tmp_path):
    """Wan 2.2 A14B: ``transformer`` at σ ≥ boundary_ratio (0.875), ``transformer_2`` below; a
    capture over levels of both experts equals each expert's capture, in the levels' order."""
    from synthetic import save_tiny_model

    b = load_backend(save_tiny_model(tmp_path / "wan22", "wan2.2"))
    assert b.pipe.transformer_2 is not None and b.pipe.config.boundary_ratio == 0.875
    assert b.expert(0.3) is b.pipe.transformer_2 and b.expert(0.9) is b.pipe.transformer
    seq = b.tokenize(["the red circle"], MAX_LEN)[0]
    size = b.input_size(64, 48, 64)
    frames = _clip(5)
    both = b.capture([frames], [seq], size, (0.9, 0.3), seed=2)
    high = b.capture([frames], [seq], size, (0.9,), seed=2)
    low = b.capture([frames], [seq], size, (0.3,), seed=2)
    assert torch.equal(both.probs[:, 0], high.probs[:, 0]) and torch.equal(both.probs[:, 1], low.probs[:, 0])
    assert not torch.equal(high.probs, low.probs) and b.transformer is b.pipe.transformer
    latents = b.encode_pixels([frames], size)
    cond = b.encode_prompts([seq])
    b.transformer = b.pipe.transformer_2  # what the low-noise capture ran: the second expert's own forward
    try:
        store = AttentionStore(
            layout=lambda block, q, k: b.layout(block, q, k, len(seq), 0), columns=torch.from_numpy(low.columns)
        )
        with b.capturing(store, b.block_names):
            b.forward(
                b.add_noise(
                    latents,
                    torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(2)).expand_as(latents),
                    0.3,
                ),
                0.3,
                cond,
                3.5,
            )
    finally:
        b.transformer = b.pipe.transformer
    assert torch.equal(torch.stack([store.maps[n][0] for n in b.block_names]), low.probs[:, 0])
