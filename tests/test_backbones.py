"""FLUX.2 [dev], FLUX.2 [klein], Qwen-Image and Z-Image: each on a tiny random pipeline of the real
diffusers classes, with tokenizers of the real types and chat templates, saved and reloaded
offline. Per backbone: the text path is the pipeline's own, every word lands on the positions
the transformer attends to, the capture is exact and leaves the output bit-identical, and every
feature (RefAM cleaning, views, presence, answers, video, calibration) runs; ``test_cli`` runs
``python -m grounding tiny-model`` + ``segment`` for each."""

import math

import numpy as np
import pytest
import torch

from fixtures import RecordSDPA, save_tiny_models, scene
from grounding.backends import AttentionStore, load_backend, pipeline_class_name
from grounding.backends.sequences import PADDING, TEXT
from grounding.backends.sequences import SPECIAL as SPECIAL_ROLE
from grounding.backends.sequences import TEMPLATE as TEMPLATE_ROLE
from grounding.config import MagnetConfig
from grounding.readout.tokens import CONTENT, MAGNET, PAD, TEMPLATE, align

ARCHS = ["flux2", "flux2-klein", "qwenimage", "zimage"]
PIPELINES = {
    "flux2": "Flux2Pipeline",
    "flux2-klein": "Flux2KleinPipeline",
    "qwenimage": "QwenImagePipeline",
    "zimage": "ZImagePipeline",
}
MAX_LEN = 96
EXPR = "the system user on the left of the red circle"  # words the templates also use


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("backbones"), ARCHS)


@pytest.fixture(scope="module")
def backends(model_dirs):
    return {a: load_backend(d) for a, d in model_dirs.items()}


def _tokens(backend, text, magnets=MagnetConfig()):
    return align(text, lambda p: backend.tokenize([p], MAX_LEN)[0], magnets)


def _piece(backend, token_id: int) -> str:
    tok = getattr(backend.pipe.tokenizer, "tokenizer", backend.pipe.tokenizer)
    return tok.decode([int(token_id)])


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_offline_and_is_picked_from_model_index(arch, model_dirs, backends):
    assert pipeline_class_name(model_dirs[arch]) == PIPELINES[arch]
    b = backends[arch]
    assert b.arch == arch and type(b.pipe).__name__ == PIPELINES[arch]
    assert all(not m.training for m in b.pipe.components.values() if isinstance(m, torch.nn.Module))
    assert (model_dirs[arch] / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize("arch", ARCHS)
def test_text_path_is_the_pipelines_own(arch, backends):
    """Our conditioning from the aligned sequence equals the pipeline's ``encode_prompt``."""
    b = backends[arch]
    prompt = "the red circle on the left, next to a tall tree"
    seq = b.tokenize([prompt], MAX_LEN)[0]
    ours = b.encode_prompts([seq])["embeds"]
    with torch.no_grad():
        if arch == "zimage":
            theirs = b.pipe.encode_prompt(
                [prompt], device="cpu", do_classifier_free_guidance=False, max_sequence_length=MAX_LEN
            )[0]
            assert len(ours) == len(theirs) == 1 and torch.equal(ours[0], theirs[0])
            assert len(seq) % 32 == 0 and len(seq) >= len(theirs[0])  # + the transformer's caption padding
            return
        theirs = b.pipe.encode_prompt(prompt, device="cpu", max_sequence_length=MAX_LEN)[0]
    assert ours.shape == theirs.shape and torch.equal(ours, theirs)


@pytest.mark.parametrize("arch", ARCHS)
def test_words_land_on_the_positions_the_transformer_attends(arch, backends):
    b = backends[arch]
    tok = _tokens(b, EXPR)
    seq = tok.sequence
    for i, w in enumerate(tok.words):
        pos = tok.positions(i)
        assert pos, f"{w.text!r} has no position"
        text = "".join(_piece(b, seq.ids[p]) for p in pos).strip()
        assert text == w.text, (w.text, text)
        assert all(seq.roles[p] == TEXT for p in pos)
    # template / system tokens are known by position and never content or magnets
    template = np.flatnonzero(seq.roles == TEMPLATE_ROLE)
    assert len(template) and set(tok.kinds[template]) == {TEMPLATE}
    assert not np.isin(tok.kinds[seq.roles != TEXT], [CONTENT, MAGNET]).any()
    # "system" / "user" of the expression are the user's words, not the template's role markers
    first_text = np.flatnonzero(seq.roles == TEXT)[0]
    assert _piece(b, seq.ids[first_text]).strip() == "the"
    # the prompt's tokens are one contiguous run inside the template
    text_pos = np.flatnonzero(seq.roles == TEXT)
    assert np.array_equal(text_pos, np.arange(text_pos[0], text_pos[-1] + 1))
    assert set(tok.kinds[seq.roles == PADDING]) <= {PAD}
    if arch == "qwenimage":  # the 34 dropped tokens are exactly the system message and the user marker
        assert first_text == 0
        suffix = "".join(_piece(b, i) for i in seq.ids[text_pos[-1] + 1 :])
        assert suffix == "<|im_end|>\n<|im_start|>assistant\n"
    if arch == "flux2":  # FLUX.2 keeps its system message in the sequence
        before = "".join(_piece(b, i) for i in seq.ids[:first_text])
        assert "You are an AI that reasons about image descriptions" in before and before.endswith("[INST]")
        assert seq.roles[0] in (TEMPLATE_ROLE, SPECIAL_ROLE) and "<s>" in _piece(b, seq.ids[0])
    if arch in ("flux2", "flux2-klein"):
        assert len(seq) == MAX_LEN and (seq.roles == PADDING).any()  # padded to max_sequence_length, attended
    if arch == "zimage":
        assert len(seq) % 32 == 0
    if arch == "flux2-klein":
        tail = "".join(_piece(b, i) for i in seq.ids[seq.roles != PADDING][-6:])
        assert tail.endswith("<think>\n\n</think>\n\n")


def test_template_edits_and_overflow_are_followed(backends):
    """FLUX.2 removes ``[IMG]`` from prompts; a prompt longer than the sequence is cut at a word."""
    b = backends["flux2"]
    tok = _tokens(b, "the dog [IMG] on the left")
    dog = next(i for i, w in enumerate(tok.words) if w.text == "dog")
    assert "".join(_piece(b, tok.sequence.ids[p]) for p in tok.positions(dog)).strip() == "dog"
    long = " ".join(["red circle"] * 40)
    with pytest.warns(UserWarning, match="truncated"):
        cut = _tokens(b, long)
    assert "[/INST]" in "".join(_piece(b, i) for i in cut.sequence.ids)  # the template's end survives
    with pytest.raises(ValueError, match="no room for the expression"):  # the system message alone fills it
        align("red circle", lambda p: b.tokenize([p], 16)[0], MagnetConfig())


def _inputs(b, expressions):
    tokens = [_tokens(b, e) for e in expressions]
    seqs = b.pad_batch([t.sequence for t in tokens])
    own = [len(t.sequence) for t in tokens]
    size = b.input_size(64, 48, 64)
    latents = b.encode_pixels([scene(seed=i) for i in range(len(tokens))], size)
    g = torch.Generator().manual_seed(3)
    noisy = 0.7 * latents + 0.3 * torch.randn(latents.shape, generator=g)
    used = np.zeros(len(seqs[0]), dtype=bool)
    for s in seqs:
        used |= s.roles != PADDING
    return seqs, own, noisy, b.encode_prompts(seqs), np.flatnonzero(used)


LONG = "the red circle on the left of the tall tree behind the small blue square next to the big green star"


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_capture_is_exact_and_output_bit_identical(arch, backends):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    b = backends[arch]
    # two prompts of different lengths: Qwen-Image and Z-Image pad the batch and mask the padding
    seqs, own, noisy, cond, columns = _inputs(b, [LONG, "blue square"])
    text_len, grid = len(seqs[0]), b.grid(noisy)
    names = b.block_names
    active = _AttentionBackendRegistry._active_backend

    rec = RecordSDPA()
    hooks = []
    for n in names:
        m = b.attention_module(n)
        hooks.append(m.register_forward_pre_hook(lambda _m, _a, n=n: setattr(rec, "block", n)))
        hooks.append(m.register_forward_hook(lambda *_: setattr(rec, "block", None)))
    with rec:
        stock = b.forward(noisy, 0.3, cond, 1.0)
    for h in hooks:
        h.remove()
    assert [c[0] for c in rec.calls] == names

    store = AttentionStore(
        layout=lambda block, q, k: b.layout(block, q, k, text_len, grid[0] * grid[1]), columns=torch.from_numpy(columns)
    )
    with b.capturing(store, names):
        ours = b.forward(noisy, 0.3, cond, 1.0)
    assert torch.equal(stock, ours), "capture changed the transformer output"
    assert _AttentionBackendRegistry._active_backend == active
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in b.transformer.modules())

    n_img = grid[0] * grid[1]
    for name, q, k, mask in rec.calls:
        lay = b.layout(name, q.shape[2], k.shape[2], text_len, n_img)
        logits = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
        full = torch.softmax(logits, dim=-1)
        ref = full[:, :, lay.image][..., lay.text.start + torch.from_numpy(columns)]
        got = store.maps[name][0].double()
        # O(N·C) per block: [B, H, N, C], never the [S, S] matrix
        assert got.shape == (2, q.shape[1], n_img, len(columns)) and got.shape == ref.shape
        rel = ((got - ref).abs().max() / ref.abs().max()).item()
        assert rel <= 1e-5, f"{arch} {name}: relative error {rel:.2e}"
        if arch in ("qwenimage", "zimage"):  # the shorter prompt's batch padding got no attention
            assert own[1] < own[0] and mask is not None
            assert float(got[1][..., torch.from_numpy(columns >= own[1])].abs().max()) == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_sample_map_does_not_depend_on_its_batch(arch, backends):
    b = backends[arch]
    size = b.input_size(64, 48, 64)
    a, c = _tokens(b, "the red circle on the left"), _tokens(b, "blue square")
    alone = b.capture([scene()], [a.sequence], size, (0.5,), seed=1)
    both = b.capture([scene(), scene(seed=2)], [a.sequence, c.sequence], size, (0.5,), seed=1)
    cols = np.isin(both.columns, alone.columns)
    np.testing.assert_allclose(
        both.sample(0)[..., torch.from_numpy(cols)].numpy(), alone.sample(0).numpy(), atol=1e-5, rtol=1e-4
    )


@pytest.fixture(scope="module")
def grounders(model_dirs):
    from grounding import Grounder

    return {a: Grounder.from_pretrained(d, device="cpu") for a, d in model_dirs.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_feature_runs(arch, grounders, tmp_path):
    from grounding.pipeline.video import VideoConfig

    g = grounders[arch]
    img = scene(80, 60)
    r = g.segment(img, "the red circle on the left")
    assert r.mask.shape == (60, 80) and r.heatmap.shape == (60, 80) and np.isfinite(r.heatmap).all()
    again = g.segment(img, "the red circle on the left")
    assert np.array_equal(r.heatmap, again.heatmap)  # deterministic
    for overrides in (
        {"sinks.mode": "suppress"},
        {"sinks.mode": "redirect"},
        {"magnets.enabled": False},
        {"views.mode": "assembled", "views.fill": "attention"},
        {"views.mode": "assembled", "views.fill": "blur"},
    ):
        out = g.segment(img, "blue square", **{k.replace(".", "__"): v for k, v in overrides.items()})
        assert np.isfinite(out.heatmap).all() and out.mask.shape == (60, 80), overrides
    assert isinstance(r.present, bool) and 0.0 <= r.presence_score <= 1.0
    assert np.isfinite(r.features["content_share"]) and r.features["concentration"] is not None
    ans = g.ground_answer(img, "what is left of the square?", "the red circle")
    assert ans.heatmap.shape == (60, 80)
    frames = [scene(64, 48, seed=i) for i in range(3)]
    v = g.segment_video(frames, "the red circle", VideoConfig(batch_frames=2))
    assert len(v.frames) == 3 and all(f.mask.shape == (48, 64) for f in v.frames)


@pytest.mark.parametrize("arch", ARCHS)
def test_calibrate_picks_blocks_and_heads_on_an_unseen_backbone(arch, grounders, tmp_path):
    from training.calibrate import collect, fit

    g = grounders[arch]
    samples = []
    for i in range(3):
        im = scene(64, 48, seed=i)
        mask = np.zeros((48, 64), dtype=bool)
        mask[14:34, 9:29] = True  # the red disc
        samples.append((im, "the red circle", mask))
    c = collect(g, samples, (0.3, 0.6))
    assert c.per.shape[1] == len(g.backend.block_names)
    fitted, report = fit(c, g.config)
    assert 0.0 <= report["before"] <= report["after"] <= 1.0
    assert set(fitted.blocks) <= set(g.backend.block_names) and fitted.head_weights
    assert all(k.split("/")[0] in g.backend.block_names for k in fitted.head_weights)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_batch_of_different_lengths_reads_like_each_alone(arch, grounders):
    """Several expressions on one image in one batch (the service's path): prompts of different
    lengths are padded and masked, and each map equals the one computed alone."""
    g = grounders[arch]
    img = scene(80, 60)
    pairs = [(img, LONG), (img, "blue square")]
    for views in ("global", "assembled"):
        batch = g.segment_batch(pairs, views=views)
        for (im, text), r in zip(pairs, batch):
            alone = g.segment(im, text, views=views)
            np.testing.assert_allclose(r.heatmap, alone.heatmap, atol=2e-3)
