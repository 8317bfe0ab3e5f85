"""Presence: does the image hold the referent? Features of one grounding, a logistic model over
them, and the calibration helpers (ROC AUC, Youden threshold) — pure functions.

Features (each in [0, 1]):
- ``content_share``: of the attention image tokens give the prompt's real tokens, the share on
  content words (the rest goes to stop words, magnets, EOS) — low when nothing matches them;
- ``concentration``: how much the referent map commits to a region (``views.match_score``);
- ``agreement``: cosine of the global and local maps (assembled views only);
- ``sam_iou``: SAM's predicted IoU of the chosen mask (with a SAM segmenter only);
- ``word_agreement`` (``rule="agreement"`` only; not a model feature): whether the attribute
  words' maps light one region (``readout.agreement``);
- per captured block and head (``head_features``, names ``<stat>@<block>/<head>``), of the raw
  attention ``c[n]`` image token ``n`` gives the content tokens (mean over noise levels):
  ``share`` (Σ c / all attention on the prompt's real tokens), ``peak`` (max c), ``top2`` /
  ``top10`` (mean c over the top 2 % / 10 % of image tokens) — a referent that is there draws
  more, and more concentrated, attention in some heads than a partial match does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..config import PresenceConfig
from .tokens import CONTENT, PAD

FEATURES = ("content_share", "concentration", "agreement", "sam_iou")
HEAD_STATS = ("share", "peak", "top2", "top10")


def content_share(A: torch.Tensor, kinds: np.ndarray) -> float:
    """``A`` raw probabilities ``[L, V, H, N, C]``; kinds ``[C]``."""
    kinds = np.asarray(kinds)
    valid = torch.from_numpy(kinds != PAD)
    content = torch.from_numpy(kinds == CONTENT)
    total = float(A[..., valid].sum())
    return float(A[..., content].sum()) / total if total > 0 else 0.0


def head_features(
    A: torch.Tensor, kinds: np.ndarray, block_names: list[str], wanted: set[str] | None = None
) -> dict[str, float]:
    """``A`` raw probabilities ``[L, V, H, N, C]``, kinds ``[C]``: the ``HEAD_STATS`` of every
    (block, head), or only the ``wanted`` names (the ones a fitted model uses)."""
    kinds = np.asarray(kinds)
    keys = [
        (stat, li, h, f"{stat}@{b}/{h}")
        for stat in HEAD_STATS
        for li, b in enumerate(block_names)
        for h in range(A.shape[2])
    ]
    keys = [k for k in keys if wanted is None or k[3] in wanted]
    if not keys:
        return {}
    c = A[..., torch.from_numpy(kinds == CONTENT)].sum(-1).mean(1).double()  # [L, H, N]
    total = A[..., torch.from_numpy(kinds != PAD)].sum(-1).mean(1).double().sum(-1)  # [L, H]
    n = c.shape[-1]
    ranked = torch.sort(c, dim=-1, descending=True).values
    stats = {
        "share": c.sum(-1) / total.clamp_min(1e-30),
        "peak": ranked[..., 0],
        "top2": ranked[..., : max(1, n // 50)].mean(-1),
        "top10": ranked[..., : max(1, n // 10)].mean(-1),
    }
    return {name: float(stats[stat][li, h]) for stat, li, h, name in keys}


def score(features: dict[str, float | None], cfg: PresenceConfig) -> float:
    """Presence probability from the fitted model; features it was not fitted on, or that this
    grounding lacks, are left out. Unfitted: the map's concentration."""
    if not cfg.weights:
        return float(features.get("concentration") or 0.0)
    known = {k: v for k, v in features.items() if v is not None}
    z = cfg.bias + sum(w * float(known[k]) for k, w in cfg.weights.items() if k in known)
    return sigmoid(z)


def sigmoid(z: float) -> float:
    """1 / (1 + e^−z) without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def is_present(features: dict[str, float | None], cfg: PresenceConfig, mask_nonempty: bool) -> tuple[bool, float]:
    """(present, score). ``rule="agreement"`` with a ``word_agreement`` feature (two attribute
    words or more): the agreement against ``agreement_threshold``; otherwise the model's score."""
    agree = features.get("word_agreement")
    if cfg.rule == "agreement" and agree is not None:
        return bool(mask_nonempty and agree >= cfg.agreement_threshold), float(agree)
    s = score(features, cfg)
    return bool(mask_nonempty and (not cfg.weights or s >= cfg.threshold)), s


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-regularised logistic regression (Newton's method).
    ``X`` ``[S, F]``, ``y`` ``[S]`` in {0, 1}. Features are standardised inside and folded back."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-9
    Z = np.hstack([(X - mu) / sd, np.ones((len(X), 1))])
    w = np.zeros(Z.shape[1])
    reg = np.full(Z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(Z @ w)))
        grad = Z.T @ (p - y) + reg * w
        hess = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = w[:-1] / sd
    return coef, float(w[-1] - (coef * mu).sum())


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties count half)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("ROC AUC needs both present and absent samples")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold maximising sensitivity + specificity − 1."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    best, best_t = -1.0, 0.5
    for t in np.unique(s):
        pred = s >= t
        j = pred[y].mean() + (~pred[~y]).mean() - 1
        if j > best:
            best, best_t = j, float(t)
    return best_t


def fit(
    features: list[dict[str, float | None]], labels: list[int], l2: float = 1e-2, head_stats: bool = False
) -> tuple[PresenceConfig, dict[str, Any]]:
    """Fit the logistic model on the features every sample has (``FEATURES``, and with
    ``head_stats`` the per-head ones); threshold by Youden's J. Returns the config and a report
    (features used, ROC AUC of the score and of each named feature)."""
    names = [f for f in FEATURES if all(d.get(f) is not None for d in features)]
    if head_stats:
        names += [f for f in features[0] if "@" in f and all(d.get(f) is not None for d in features)]
    if not names:
        raise ValueError("no presence feature is available for every sample")
    X = np.array([[d[f] for f in names] for d in features], dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    coef, bias = fit_logistic(X, y, l2)
    cfg = PresenceConfig(weights={f: float(c) for f, c in zip(names, coef)}, bias=bias)
    scores = np.array([score(d, cfg) for d in features])
    cfg.threshold = youden_threshold(scores, y)
    report = {
        "features": names,
        "roc_auc": roc_auc(scores, y),
        "threshold": cfg.threshold,
        "feature_auc": {f: roc_auc(X[:, i], y) for i, f in enumerate(names) if "@" not in f},
        "samples": len(y),
        "present": int(y.sum()),
    }
    return cfg, report
