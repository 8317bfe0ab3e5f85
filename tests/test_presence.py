"""Presence: ROC AUC, threshold and logistic fit on constructed data; features from the grounder."""

import numpy as np
import pytest

from grounding.config import PresenceConfig
from grounding.readout import presence


def test_roc_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1 → pairs won: (0.9>0.5, 0.9>0.1, 0.4>0.1) = 3 of 4
    assert presence.roc_auc([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.75)
    assert presence.roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts half
    with pytest.raises(ValueError):
        presence.roc_auc([0.1, 0.2], [1, 1])


def test_youden_threshold_separates_separable_scores():
    t = presence.youden_threshold([0.1, 0.2, 0.3, 0.7, 0.8], [0, 0, 0, 1, 1])
    assert 0.3 < t <= 0.7


def test_logistic_fit_finds_the_informative_feature():
    rng = np.random.RandomState(0)
    y = (rng.rand(400) < 0.5).astype(float)
    informative = y + rng.normal(0, 0.5, 400)
    noise = rng.normal(0, 1, 400)
    coef, bias = presence.fit_logistic(np.stack([informative, noise], 1), y)
    assert coef[0] > 1.0 and abs(coef[1]) < 0.3 * coef[0]
    p = 1 / (1 + np.exp(-(np.stack([informative, noise], 1) @ coef + bias)))
    assert ((p > 0.5) == y.astype(bool)).mean() > 0.8


def test_fit_uses_features_every_sample_has_and_reports_auc():
    feats = [
        {"content_share": 0.2 + 0.5 * (i % 2), "concentration": 0.3, "agreement": None, "sam_iou": None}
        for i in range(20)
    ]
    labels = [i % 2 for i in range(20)]
    cfg, report = presence.fit(feats, labels)
    assert report["features"] == ["content_share", "concentration"] and report["roc_auc"] == 1.0
    assert all(presence.is_present(f, cfg, True)[0] == bool(y) for f, y in zip(feats, labels))
    assert not presence.is_present(feats[1], cfg, mask_nonempty=False)[0]


def test_unfitted_presence_is_the_non_empty_mask():
    f = {"content_share": 0.1, "concentration": 0.02}
    assert presence.is_present(f, PresenceConfig(), True) == (True, 0.02)
    assert presence.is_present(f, PresenceConfig(), False)[0] is False


def test_results_carry_presence_features(flux_grounder, scene_image):
    r = flux_grounder.segment(scene_image, "the red circle")
    assert set(r.features) == set(presence.FEATURES)
    assert 0.0 < r.features["content_share"] < 1.0 and 0.0 <= r.features["concentration"] <= 1.0
    assert r.features["agreement"] is None and r.features["sam_iou"] is None
    assert r.present is True and r.presence_score == pytest.approx(r.features["concentration"])
    a = flux_grounder.segment(scene_image, "the red circle", **{"views.mode": "assembled"})
    assert 0.0 < a.features["agreement"] <= 1.0 + 1e-6
