"""Word agreement (readout.agreement): the read-out on constructed attention, the rule, and the
engine path (extra word blocks captured without changing the referent map)."""

import dataclasses

import numpy as np
import pytest
import torch

from grounding.config import ConfigError, MagnetConfig, PresenceConfig
from grounding.readout import agreement, presence
from grounding.readout.tokens import build_prompt, complement_words

GRID = (4, 4)


def blob(cells: list[int], n: int = 16, floor: float = 0.01) -> torch.Tensor:
    m = torch.full((n,), floor, dtype=torch.float64)
    m[cells] = 1.0
    return m / m.sum()


def test_words_peaking_together_agree_and_apart_do_not():
    # two red things at cells 0 and 15, circles at 15 and 5: "red circle" is at 15
    red, circle = blob([0, 15]), blob([15, 5])
    assert agreement.agreement(torch.stack([red, circle]), GRID) == pytest.approx(1.0)
    # absent: red things at 0 and 3, circles at 12 and 15 (other corners, not adjacent)
    red, circle = blob([0, 3]), blob([12, 15])
    assert agreement.agreement(torch.stack([red, circle]), GRID) < 0.2
    assert agreement.agreement(torch.stack([red]), GRID) is None  # one word has nothing to agree with


def test_agreement_map_is_the_weakest_word_relative_to_its_peak():
    a, b = blob([5]), blob([5, 10])
    am = agreement.agreement_map(torch.stack([a, b]), GRID)
    assert am.shape == (16,) and int(am.argmax()) == 5
    assert float(am.max()) <= 1.0 and float(am.min()) >= 0.0


def test_word_maps_pool_heads_before_normalising():
    # one block, one level, two heads, 4 image tokens, 2 text columns (word 0, word 1)
    A = torch.zeros(1, 1, 2, 4, 2)
    A[0, 0, 0, :, 0] = torch.tensor([0.4, 0.0, 0.0, 0.0])  # head 0 carries word 0 on token 0
    A[0, 0, 1, :, 0] = torch.tensor([0.0, 0.001, 0.0, 0.0])  # head 1 barely attends (token 1)
    A[0, 0, :, :, 1] = 0.1
    M = agreement.word_maps(A, np.array([0, 1]), [0, 1])
    assert M.shape == (2, 4) and torch.allclose(M.sum(-1), torch.ones(2, dtype=M.dtype))
    # per-head normalisation would give token 1 half of word 0's map; pooled first it is ~0.25 %
    assert float(M[0, 0]) > 0.99 and float(M[0, 1]) < 0.01


def test_attribute_words_leave_out_the_relation_anchor_and_stop_words():
    from grounding.readout.tokens import PromptTokens

    def attrs(expr):
        prompt, words = build_prompt(expr, MagnetConfig())
        n = len(words)
        tok = PromptTokens(expr, prompt, words, np.zeros(n, np.int8), np.arange(n, dtype=np.int32), None, None)
        return [words[i].text for i in agreement.attribute_words(tok, np.arange(n))]

    assert attrs("the red circle") == ["red", "circle"]
    assert attrs("the square left of the yellow circle") == ["square", "left"]
    assert attrs("the circle that is red") == ["circle", "red"]
    assert attrs("both red shapes") == ["red", "shapes"]
    _, words = build_prompt("the circle that is red", MagnetConfig())
    assert complement_words(words) == []


def test_agreement_rule_decides_presence_and_falls_back_to_the_model():
    cfg = PresenceConfig(rule="agreement", agreement_threshold=0.6)
    assert presence.is_present({"word_agreement": 0.8, "concentration": 0.1}, cfg, True) == (True, 0.8)
    assert presence.is_present({"word_agreement": 0.3, "concentration": 0.9}, cfg, True) == (False, 0.3)
    assert presence.is_present({"word_agreement": 0.8}, cfg, False)[0] is False  # nothing segmented
    # one attribute word: no agreement to read → the (unfitted) model: concentration
    assert presence.is_present({"word_agreement": None, "concentration": 0.4}, cfg, True) == (True, 0.4)
    with pytest.raises(ValueError, match="presence.rule"):
        PresenceConfig(rule="vote")
    with pytest.raises(ConfigError, match="agreement_threshold"):
        PresenceConfig(agreement_threshold=1.5)


def test_engine_reads_word_agreement_from_extra_blocks(flux_grounder, scene_image):
    names = flux_grounder.backend.block_names
    base = {"blocks": (names[-1],)}
    plain = flux_grounder.segment(scene_image, "the red circle", **base)
    assert "word_agreement" not in plain.features
    r = flux_grounder.segment(
        scene_image,
        "the red circle",
        **base,
        **{"presence.rule": "agreement", "presence.word_blocks": tuple(names[:2])},
    )
    a = r.features["word_agreement"]
    assert a is not None and 0.0 < a <= 1.0 and r.presence_score == pytest.approx(a)
    np.testing.assert_array_equal(r.heatmap, plain.heatmap)  # the word blocks do not enter the map
    assert r.features["content_share"] == pytest.approx(plain.features["content_share"])
    one = flux_grounder.segment(scene_image, "circle", **base, **{"presence.rule": "agreement"})
    assert one.features["word_agreement"] is None


def test_fit_agreement_fits_only_the_threshold(flux_grounder, scene_image):
    from training.calibrate import fit_agreement

    samples = [(scene_image, "the red circle", 1), (scene_image, "the green square", 0), (scene_image, "circle", 1)]
    names = tuple(flux_grounder.backend.block_names[:2])
    fitted, report = fit_agreement(flux_grounder, samples, names)
    p = fitted.presence
    assert p.rule == "agreement" and p.word_blocks == names and 0.0 <= p.agreement_threshold <= 1.0
    assert p.weights == flux_grounder.config.presence.weights  # the model the one-word case falls back to
    assert report["samples"] == 2 and report["skipped_one_word"] == 1 and 0.0 <= report["roc_auc"] <= 1.0
    r = flux_grounder.segment(scene_image, "the red circle", presence=dataclasses.asdict(p))
    assert r.presence_score == pytest.approx(r.features["word_agreement"])
    with pytest.raises(ValueError, match="present and absent"):
        fit_agreement(flux_grounder, samples[:1], names)
