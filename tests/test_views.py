"""AGLA-style prompt-masked views: pure helpers on constructed tensors, and the grounder's passes."""

import numpy as np
import pytest
import torch
from PIL import Image

from grounding.config import ViewsConfig
from grounding.readout import views


def _norm(x):
    x = torch.as_tensor(x, dtype=torch.float32)
    return x / x.sum()


def test_match_score_uniform_is_zero_and_one_hot_is_one():
    assert views.match_score(torch.ones(100)) == pytest.approx(0.0, abs=1e-6)
    one = torch.zeros(100)
    one[7] = 1.0
    assert views.match_score(one) == pytest.approx(1.0)


def test_smooth_keeps_a_flat_map_flat_and_spreads_a_peak():
    flat = torch.full((36,), 1 / 36)
    assert torch.allclose(views.smooth(flat, (6, 6), 1.0), flat, atol=1e-7)
    peak = torch.zeros(36)
    peak[14] = 1.0
    s = views.smooth(peak, (6, 6), 1.0).reshape(6, 6)
    assert s[2, 2] == s.max() and s[2, 3] > 0 and s[2, 3] == pytest.approx(float(s[3, 2]))


def test_keep_tokens_takes_the_top_fraction():
    m = _norm(torch.arange(1, 101, dtype=torch.float32))
    keep = views.keep_tokens(m, (10, 10), ViewsConfig(keep=0.3, smooth=0.0))
    assert keep.sum() == 30 and keep[70:].all() and not keep[:70].any()
    # keep=None: 1 - s/2 from the map's match score (a sharp map keeps about half)
    sharp = torch.zeros(100)
    sharp[55] = 1.0
    assert views.keep_tokens(sharp, (10, 10), ViewsConfig(keep=None, smooth=0.0)).sum() == 50
    with pytest.raises(ValueError):
        views.keep_tokens(m, (10, 10), ViewsConfig(keep=1.5))


def test_assemble_restricts_to_the_support_and_lets_the_local_map_rerank():
    G = _norm([0.05, 0.40, 0.35, 0.20])  # support at beta=0.5: tokens 1, 2 (0.35 >= 0.2) and 3
    L = _norm([0.90, 0.02, 0.06, 0.02])
    F = views.assemble(G, L, ViewsConfig(alpha=1.0, beta=0.5, lam=1.0))
    assert float(F.sum()) == pytest.approx(1.0)
    assert F[0] == 0.0  # outside G's support, whatever L says
    assert int(F.argmax()) == 2  # L prefers token 2 over token 1 inside the support
    # log F = log G + alpha*log(L + lam/N), by hand
    n = 4
    want = G * (L + 1.0 / n)
    want[0] = 0
    assert torch.allclose(F, want / want.sum(), atol=1e-6)
    # a flat local map leaves G's ranking alone
    flat = views.assemble(G, torch.full((4,), 0.25), ViewsConfig(beta=0.0))
    assert torch.allclose(flat, G, atol=1e-6)


def test_agreement_is_cosine():
    a = _norm([1.0, 0.0, 0.0])
    assert views.agreement(a, a) == pytest.approx(1.0)
    assert views.agreement(a, _norm([0.0, 1.0, 1.0])) == pytest.approx(0.0)


def test_masked_view_fills_only_dropped_cells():
    rng = np.random.RandomState(0)
    im = Image.fromarray(rng.randint(0, 255, (32, 48, 3)).astype(np.uint8))
    keep = torch.zeros(4 * 6, dtype=torch.bool)
    keep[:6] = True  # first row of cells (8 px)
    for fill in ("blur", "mean"):
        out = np.asarray(views.masked_view(im, keep, (4, 6), fill))
        assert out.shape == (32, 48, 3)
        assert np.array_equal(out[:8], np.asarray(im)[:8])
        assert not np.array_equal(out[8:], np.asarray(im)[8:])
    mean = np.asarray(views.masked_view(im, keep, (4, 6), "mean"))[8:]
    assert (mean == mean[0, 0]).all()
    with pytest.raises(ValueError):
        views.masked_view(im, keep, (4, 6), "black")


@pytest.mark.parametrize("fill", ["blur", "mean", "attention"])
def test_keeping_everything_reproduces_the_global_pass(flux_grounder, scene_image, fill):
    """A view that keeps every token is the original image (or no attention mask): the local map
    equals the global one bit for bit, so the local pass re-noises with the same seeded noise."""
    cfg = flux_grounder.config.replace(**{"views.mode": "assembled", "views.fill": fill, "views.keep": 1.0})
    item = flux_grounder.referent_maps([(scene_image, "the red circle")], cfg)[0]
    assert torch.equal(item.global_map, item.local_map)
    assert item.agreement == pytest.approx(1.0)
    plain = flux_grounder.referent_maps([(scene_image, "the red circle")], flux_grounder.config)[0]
    assert torch.equal(item.global_map, plain.map / plain.map.sum())


def test_masked_view_changes_the_local_map_and_attention_fill_spares_image_rows(flux_grounder, scene_image):
    cfg = flux_grounder.config.replace(**{"views.mode": "assembled", "views.keep": 0.3, "blocks": None})
    for fill in ("blur", "attention"):
        item = flux_grounder.referent_maps([(scene_image, "the red circle")], cfg.replace(**{"views.fill": fill}))[0]
        assert not torch.equal(item.global_map, item.local_map)
        assert float(item.map.sum()) == pytest.approx(1.0, abs=1e-5)
        support = item.global_map >= cfg.views.beta * item.global_map.max()
        assert (item.map[~support] == 0).all()
    # attention fill: only text queries lose the dropped image keys, so the first block's
    # image->text probabilities (image queries) are exactly the global pass's
    g = flux_grounder
    tok = g.tokens("the red circle", cfg)
    im = scene_image.convert("RGB")
    cap, b = g.map_stage.capture([im], [tok], cfg)[0]
    keep = torch.zeros(cap.probs.shape[-2], dtype=torch.bool)
    keep[: keep.numel() // 3] = True
    masked, _ = g.map_stage.capture([im], [tok], cfg, image_keep=[keep])[0]
    assert torch.allclose(cap.probs[0], masked.probs[0], atol=1e-6)
    assert not torch.allclose(cap.probs[-1], masked.probs[-1], atol=1e-6)


def test_unknown_view_options_are_value_errors(flux_grounder, scene_image):
    with pytest.raises(ValueError, match="views.mode"):
        flux_grounder.segment(scene_image, "the red circle", **{"views.mode": "local"})
    with pytest.raises(ValueError, match="views.fill"):
        flux_grounder.segment(scene_image, "the red circle", **{"views.mode": "assembled", "views.fill": "black"})
