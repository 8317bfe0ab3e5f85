"""Demo-model training pieces: grounding-loss targets and loss, and a tiny end-to-end run that
resumes from its checkpoint and exports a pipeline the Grounder loads."""

import json

import numpy as np
import pytest
import torch

from eval.shapes import COLOURS, Obj, caption_spans, referring_example, render
from grounding.config import MagnetConfig
from synthetic.tokenizers import t5_tokenizer
from training.demo import DemoConfig, SceneBatches, export_weights, grounding_loss, token_targets, train_demo


def _scene():
    objs = [Obj("circle", "red", "big", 8, 8, 6), Obj("square", "blue", "small", 24, 24, 5)]
    return render(objs, 32, np.random.RandomState(0))


def test_caption_spans_cover_each_named_object():
    scene = _scene()
    text, spans = caption_spans(scene, np.random.RandomState(1), position=1.0)
    for k, a, e in spans:
        phrase = text[a:e]
        o = scene.objects[k]
        assert phrase.startswith("a ") and o.colour in phrase and o.shape in phrase
    assert {k for k, _, _ in spans} == {0, 1}


def test_relation_examples_supervise_the_complement_onto_the_anchor():
    rng = np.random.RandomState(3)
    scene, target, expr, spans = referring_example(rng, "relation", 64)
    anchor = scene.objects[2]
    assert expr.endswith(f"of the {anchor.colour} {anchor.shape}")
    tok = t5_tokenizer()
    T = token_targets(tok, [expr], [[(scene.masks[k], a, e) for k, a, e in spans]], 16, 16)[0]  # [N, T]
    cells = [m.reshape(16, 4, 16, 4).mean(axis=(1, 3)).reshape(-1) for m in scene.masks]
    words = [p.lstrip("▁") for p in tok.convert_ids_to_tokens(tok(expr).input_ids)]
    side = "left" if "left" in words else "right"
    for t, w in enumerate(words):
        if w in (scene.objects[target].shape, side) and t < words.index("of"):
            assert np.allclose(T[:, t].numpy(), cells[target], atol=1e-6), w
        elif w in (anchor.colour, anchor.shape) and t > words.index("of"):
            assert np.allclose(T[:, t].numpy(), cells[2], atol=1e-6), w
        else:
            assert float(T[:, t].abs().sum()) == 0.0, w


def test_token_targets_mark_content_words_with_their_object_cells():
    scene = _scene()
    text = "a big red circle at the top left and a small blue square"
    spans = [(0, 0, text.index(" and")), (1, text.index("a small"), len(text))]
    tok = t5_tokenizer()
    T = token_targets(tok, [text], [[(scene.masks[k], a, e) for k, a, e in spans]], 16, 8)[0]  # [N, T]
    pieces = tok.convert_ids_to_tokens(tok(text).input_ids)
    cells = [m.reshape(8, 4, 8, 4).mean(axis=(1, 3)).reshape(-1) for m in scene.masks]
    for t, p in enumerate(pieces):
        word = p.lstrip("▁")
        if word in ("big", "red", "circle", "top", "left"):
            assert np.allclose(T[:, t].numpy(), cells[0], atol=1e-6), word
        elif word in ("small", "blue", "square"):
            assert np.allclose(T[:, t].numpy(), cells[1], atol=1e-6), word
        else:  # a, at, the, and, EOS
            assert float(T[:, t].abs().sum()) == 0.0, word


def test_word_targets_put_each_word_on_what_it_denotes():
    """Per-word targets (issue #32): a colour word on every object of its colour, a shape word on
    every object of its shape, a category noun on every object, a position word on its third;
    relational "left of" and words that denote nothing stay unsupervised."""
    from eval.shapes import Obj, render, word_spans

    objs = [
        Obj("circle", "red", "big", 14, 14, 8),
        Obj("square", "red", "small", 50, 14, 6),
        Obj("circle", "blue", "small", 14, 50, 6),
        Obj("triangle", "green", "big", 48, 48, 9),
    ]
    scene = render(objs, 64, np.random.RandomState(0))
    m = scene.masks
    text = "the red shapes and both circles at the top, the square left of the green triangle"
    got = {text[a:e]: mask for mask, a, e in word_spans(text, scene)}
    assert set(got) == {"red", "shapes", "circles", "top", "square", "green", "triangle"}
    assert np.array_equal(got["red"], m[0] | m[1]) and np.array_equal(got["circles"], m[0] | m[2])
    assert np.array_equal(got["shapes"], m[0] | m[1] | m[2] | m[3]) and np.array_equal(got["green"], m[3])
    assert got["top"][:21].all() and not got["top"][22:].any()  # the top third of the image
    (only,) = word_spans("the purple circle", scene)  # no purple object: "purple" supervises nothing
    assert np.array_equal(only[0], m[0] | m[2]) and only[1:] == (11, 17)
    tok = t5_tokenizer()
    T = token_targets(tok, ["the red circle"], [word_spans("the red circle", scene)], 16, 8)[0]
    pieces = [p.lstrip("▁") for p in tok.convert_ids_to_tokens(tok("the red circle").input_ids)]
    cells = [x.reshape(8, 8, 8, 8).mean(axis=(1, 3)).reshape(-1) for x in (m[0] | m[1], m[0] | m[2])]
    assert np.allclose(T[:, pieces.index("red")].numpy(), cells[0], atol=1e-6)
    assert np.allclose(T[:, pieces.index("circle")].numpy(), cells[1], atol=1e-6)


def test_restyled_scenes_keep_objects_and_redraw_masks_with_the_pixels():
    from training.appearance import restyle

    scene = _scene()
    again = restyle(scene, 32, np.random.RandomState(1))
    assert again.objects == scene.objects and len(again.masks) == len(scene.masks)
    img = np.asarray(again.image, dtype=np.float32)
    for o, m_old, m_new in zip(scene.objects, scene.masks, again.masks):
        assert abs(int(m_new.sum()) - int(m_old.sum())) <= 0.25 * m_old.sum()  # turned, not resized
        ys, xs = np.nonzero(m_new)
        assert abs(xs.mean() - o.x) < 0.3 * o.r + 1 and abs(ys.mean() - o.y) < 0.3 * o.r + 1
        inside = img[m_new & ~np.logical_or.reduce([m for m in again.masks if m is not m_new])].mean(0)
        assert np.abs(inside - np.array(COLOURS[o.colour])).max() < 60  # the object's colour where its mask is
    assert not np.array_equal(np.asarray(again.image), np.asarray(scene.image))


def test_batches_take_turns_at_sizes_and_magnet_captions_stay_unsupervised():
    cfg = DemoConfig(batch=4, more_sizes=(96,), magnet_captions=1.0, varied=1.0, word_targets=True)
    tok = t5_tokenizer()
    got = list(SceneBatches(cfg, 0, 2, 9_000_011, tokenizer=tok, referring=0.75))
    assert [x.shape[-1] for x, _, _ in got] == [64, 96] and [t.shape[1] for _, _, t in got] == [256, 576]
    magnets = " " + " ".join(MagnetConfig().words)
    for _, caps, T in got:
        for b, c in enumerate(caps):
            assert c.endswith(magnets)
            ids = tok(c, padding="max_length", max_length=cfg.max_sequence_length, truncation=True).input_ids
            n_words = len(tok(c[: -len(magnets)]).input_ids) - 1  # without EOS
            assert float(T[b, :, n_words:].abs().sum()) == 0.0 and len(ids) == cfg.max_sequence_length
    with pytest.raises(SystemExit):
        from training.cli import main

        main(["finetune-demo", "--out", "/nonexistent", "--more-sizes", "90"])


def test_grounding_loss_is_low_on_the_object_and_has_gradient():
    n, t = 16, 3
    targets = torch.zeros(1, n, t)
    targets[0, :4, 1] = 1.0  # text position 1 names the object on image tokens 0..3
    on = torch.full((1, 2, n, t), -5.0)
    on[..., :4, 1] = 5.0
    on[..., 4:, 0] = 5.0  # background tokens look at position 0 (an article), not at the object word
    off = torch.full((1, 2, n, t), -5.0, requires_grad=True)
    with torch.no_grad():
        off[..., 8:, 1] = 5.0
        off[..., :8, 0] = 5.0
    assert float(grounding_loss([on], targets)) < 1e-3
    loss = grounding_loss([off], targets)
    assert float(loss) > 0.9  # the word's column lies off the object
    loss.backward()
    assert off.grad is not None and off.grad.abs().sum() > 0


def test_tiny_training_run_resumes_and_exports(tmp_path):
    cfg = DemoConfig(
        size=32,
        vae_steps=2,
        steps=3,
        batch=2,
        width_heads=2,
        head_dim=16,
        dual_blocks=1,
        single_blocks=1,
        text_dim=32,
        max_sequence_length=24,
        checkpoint_every=1,
        warmup=1,
        refer_steps=0,
    )
    out = tmp_path / "run"
    weights = train_demo(out, cfg, weights_only=True)
    st = torch.load(out / "train" / "transformer.pt", weights_only=False)
    assert st["step"] == 3
    cfg.steps = 4  # resume: one more step from the checkpoint
    train_demo(out, cfg, weights_only=True)
    assert torch.load(out / "train" / "transformer.pt", weights_only=False)["step"] == 4
    cfg.refer_steps, cfg.referring = 2, 1.0  # stage 3 starts from stage 2's weights
    before = torch.load(out / "train" / "transformer.pt", weights_only=False)["transformer"]
    weights = train_demo(out, cfg, weights_only=True)
    after = torch.load(out / "train" / "refer.pt", weights_only=False)
    assert after["step"] == 2 and torch.load(out / "train" / "transformer.pt", weights_only=False)["step"] == 4
    assert any(not torch.equal(before[k], v) for k, v in after["transformer"].items())
    model = export_weights(weights, tmp_path / "model")
    assert json.loads((model / "grounding.json").read_text())["resolution"] == 32

    from grounding import Grounder

    g = Grounder.from_pretrained(model, device="cpu")
    r = g.segment(_scene().image, "the red circle")
    assert r.mask.shape == (32, 32) and r.heatmap.shape == (32, 32)
    # a fine-tune of the saved pipeline with per-word targets and generalized examples (issue #32)
    from training.demo import finetune_demo

    tuned = finetune_demo(
        model,
        tmp_path / "tuned",
        DemoConfig(
            batch=2,
            refer_steps=2,
            word_targets=True,
            generalized=0.5,
            more_sizes=(48,),
            magnet_captions=0.5,
            varied=0.5,
        ),
    )
    st = torch.load(tmp_path / "tuned" / "train" / "refer.pt", weights_only=False)
    assert st["step"] == 2 and json.loads((tuned / "train" / "config.json").read_text())["size"] == 32
    r2 = Grounder.from_pretrained(tuned, device="cpu").segment(_scene().image, "the red circle")
    assert r2.heatmap.shape == (32, 32) and not np.array_equal(r2.heatmap, r.heatmap)
