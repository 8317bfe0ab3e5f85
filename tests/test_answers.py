"""Answer grounding (training-free): the prompt, the generic-map contrast, the grounder's cache."""

import numpy as np
import pytest
import torch

from grounding.readout import answers


def test_answer_prompt():
    assert answers.answer_prompt("  what is on the  plate? ", " pizza ") == "what is on the plate? pizza"
    assert answers.answer_prompt("what is red?") == answers.answer_prompt("what is red?", "  ")
    with pytest.raises(ValueError):
        answers.answer_prompt("   ")


def test_contrast_discounts_what_the_generic_prompt_also_finds():
    # token 0: bright for the question AND for any prompt (a salient object); token 2: the question only
    G = torch.tensor([0.5, 0.1, 0.3, 0.1])
    generic = torch.tensor([0.7, 0.1, 0.1, 0.1])
    out = answers.contrast(G, generic, percentile=50.0)
    assert float(out.sum()) == pytest.approx(1.0)
    assert int(G.argmax()) == 0 and int(out.argmax()) == 2
    lam = float(np.percentile(generic.numpy(), 50.0))
    want = G / (generic + lam)
    assert torch.allclose(out, want / want.sum())
    # a flat generic map changes nothing
    assert torch.allclose(answers.contrast(G, torch.full((4,), 0.25), 50.0), G)
    with pytest.raises(ValueError):
        answers.contrast(G, generic, 120.0)


def test_ground_answer_caches_the_generic_map(tiny_flux_dir, scene_image):
    from grounding import Grounder

    g = Grounder.from_pretrained(tiny_flux_dir, device="cpu")
    a = g.ground_answer(scene_image, "what is left of the square?", "a red circle")
    assert a.expression == "what is left of the square? a red circle"
    assert a.mask.shape == (scene_image.height, scene_image.width) and len(g.answer_stage.generic_cache) == 1
    b = g.ground_answer(scene_image, "what is left of the square?", "a red circle")
    assert len(g.answer_stage.generic_cache) == 1 and np.array_equal(a.heatmap, b.heatmap)
    plain = g.ground_answer(scene_image, "what is left of the square?", "a red circle", **{"answer.contrast": False})
    ref = g.segment(scene_image, "what is left of the square? a red circle")
    assert np.array_equal(plain.heatmap, ref.heatmap) and not np.array_equal(plain.heatmap, a.heatmap)
    g.ground_answer(scene_image.rotate(90, expand=True), "what is red?")
    assert len(g.answer_stage.generic_cache) == 2
    with pytest.raises(ValueError):
        g.ground_answer(scene_image, "what is the?")
