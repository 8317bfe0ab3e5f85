"""Fit noise levels and block/head weights on a labelled set by maximising pointing accuracy.

Every sample is run once at all candidate noise levels with every block captured; each
(block, level, head) referent map is kept at token resolution. A combination is scored by
pointing accuracy: the aggregated map's peak token has its centre inside the GT mask. Search:
for each noise-level set (each level alone, or all), greedy forward selection of (block, head)
maps, equally weighted, against averaging every map; the best wins. The current config is
scored the same way and kept when nothing beats it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from grounding.config import GroundingConfig
from grounding.readout import maps


@dataclass
class Collected:
    per: torch.Tensor  # [S, L, V, H, N] normalised referent maps
    inside: torch.Tensor  # bool [S, N]: token centre inside the GT mask
    block_names: list[str]
    timesteps: tuple[float, ...]


def token_centres_inside(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """bool [N]: for each token cell of ``grid`` over the mask's image, is its centre pixel in the mask?"""
    h, w = mask.shape
    ys = ((np.arange(grid[0]) + 0.5) * h / grid[0]).astype(int).clip(0, h - 1)
    xs = ((np.arange(grid[1]) + 0.5) * w / grid[1]).astype(int).clip(0, w - 1)
    return mask[np.ix_(ys, xs)].reshape(-1)


def collect(grounder, samples, timesteps: tuple[float, ...]) -> Collected:
    """Per-(block, level, head) referent maps of each (image, sentence, mask) sample."""
    cfg = grounder.config.replace(timesteps=tuple(timesteps), blocks=None)
    pers, insides, names, grid0 = [], [], None, None
    for image, sentence, mask in tqdm(samples, desc="calibrate: collect", leave=False):
        per, grid, names = grounder.component_maps(image, sentence, cfg)
        if grid0 is not None and grid != grid0:
            raise ValueError("calibration images must share one aspect ratio (token grids differ)")
        grid0 = grid
        pers.append(per)
        insides.append(torch.from_numpy(token_centres_inside(np.asarray(mask, dtype=bool), grid)))
    return Collected(torch.stack(pers), torch.stack(insides), names, tuple(timesteps))


def pointing(c: Collected, levels: list[int], bw: torch.Tensor, hw: torch.Tensor) -> float:
    """Pointing accuracy of the aggregated map for level indices ``levels`` and weights."""
    if float(bw.sum()) <= 0 or float((hw * (bw[:, None] > 0)).sum()) <= 0:
        return 0.0
    m = maps.aggregate(c.per[:, :, levels], bw, hw)  # [S, N]
    return float(c.inside[torch.arange(m.shape[0]), m.argmax(dim=-1)].float().mean())


def _select_heads(c: Collected, levels: list[int], max_heads: int) -> tuple[list[tuple[int, int]], float]:
    """Greedy forward selection of (block, head) maps, equally weighted, maximising pointing."""
    per = c.per[:, :, levels].mean(dim=2)  # [S, L, H, N]
    S, L, H, _ = per.shape
    rows = torch.arange(S)
    total = torch.zeros(S, per.shape[-1])
    chosen: list[tuple[int, int]] = []
    best = 0.0
    while len(chosen) < min(max_heads, L * H):
        trial = {}
        for blk in range(L):
            for h in range(H):
                if (blk, h) not in chosen:
                    peak = (total + per[:, blk, h]).argmax(dim=-1)
                    trial[(blk, h)] = float(c.inside[rows, peak].float().mean())
        comp, acc = max(trial.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        if acc <= best and chosen:
            break
        chosen.append(comp)
        total += per[:, comp[0], comp[1]]
        best = acc
    return chosen, best


def _weights(chosen: list[tuple[int, int]], L: int, H: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block and head weights that give every chosen (block, head) map the same weight."""
    bw, hw = torch.zeros(L), torch.zeros(L, H)
    for blk, h in chosen:
        bw[blk] += 1.0
        hw[blk, h] = 1.0
    return bw, hw


def fit(c: Collected, cfg: GroundingConfig, max_heads: int = 64) -> tuple[GroundingConfig, dict]:
    """Search the noise-level set and the (block, head) maps to average; returns the fitted
    config and a report. Heads are chosen one by one (greedy forward selection), since in small
    models one head may ground while its neighbours point at the background."""
    L, V, H = c.per.shape[1:4]
    bw0, hw0 = maps.weights_for(c.block_names, H, cfg)
    if cfg.blocks:
        bw0 = bw0 * torch.tensor([float(n in cfg.blocks) for n in c.block_names])
    lv0 = [c.timesteps.index(t) for t in cfg.timesteps if t in c.timesteps] or list(range(V))
    before = pointing(c, lv0, bw0, hw0)

    ones_b, ones_h = torch.ones(L), torch.ones(L, H)
    level_sets = [[v] for v in range(V)] + ([list(range(V))] if V > 1 else [])
    candidates = []
    for ls in level_sets:
        everything = pointing(c, ls, ones_b, ones_h)
        chosen, acc = _select_heads(c, ls, max_heads)
        if everything >= acc:
            chosen, acc = [(blk, h) for blk in range(L) for h in range(H)], everything
        candidates.append((acc, -len(chosen), -len(ls), ls, chosen))
    after, _, _, levels, chosen = max(candidates, key=lambda x: x[:3])

    if after < before:  # never hand back something worse than what we had
        return cfg, {"before": before, "after": before, "kept_current": True, "samples": int(c.per.shape[0])}
    names = c.block_names
    bw, hw = _weights(chosen, L, H)
    kept = [blk for blk in range(L) if bw[blk] > 0]
    fitted = cfg.replace(
        timesteps=[c.timesteps[v] for v in levels],
        blocks=None if len(kept) == L else [names[blk] for blk in kept],
        block_weights={names[blk]: float(bw[blk]) for blk in kept},
        head_weights={f"{names[blk]}/{h}": 0.0 for blk in kept for h in range(H) if hw[blk, h] == 0},
    )
    report = {
        "before": before,
        "after": after,
        "kept_current": False,
        "timesteps": list(fitted.timesteps),
        "blocks": list(fitted.blocks) if fitted.blocks else "all",
        "heads": len(chosen),
        "samples": int(c.per.shape[0]),
    }
    return fitted, report


def collect_presence(grounder, samples, use_segmenter: bool = True) -> list[dict[str, float | None]]:
    """Presence features of each ``(image, expression, label)`` sample (``presence.FEATURES``)."""
    out = []
    for image, expression, _ in tqdm(samples, desc="calibrate: presence", leave=False):
        out.append(grounder.segment(image, expression, use_segmenter=use_segmenter).features)
    return out


def fit_presence(grounder, samples, use_segmenter: bool = True) -> tuple[GroundingConfig, dict]:
    """Fit the presence model on labelled samples; returns the config with it, and a report."""
    from grounding.readout import presence

    feats = collect_presence(grounder, samples, use_segmenter)
    fitted, report = presence.fit(feats, [label for _, _, label in samples])
    return grounder.config.replace(presence=dataclasses.asdict(fitted)), report


def fit_agreement(grounder, samples, word_blocks: tuple[str, ...] | None = None) -> tuple[GroundingConfig, dict]:
    """The word-agreement presence rule (``presence.rule="agreement"``) on labelled ``(image,
    expression, label)`` samples: one number is fitted, ``agreement_threshold`` (Youden's J over
    the samples whose expression has two attribute words or more); the logistic model stays for
    the others. Only the map stage runs (the agreement is read there; no segmenter). Returns the
    config and a report (ROC AUC of the agreement, samples used)."""
    from grounding.readout import presence

    rule = {"presence.rule": "agreement", "presence.word_blocks": word_blocks}
    cfg = grounder.config_for(rule)
    values, labels = [], []
    for image, expression, label in tqdm(samples, desc="calibrate: agreement", leave=False):
        a = grounder.referent_maps([(image, expression)], cfg)[0].features.get("word_agreement")
        if a is not None:
            values.append(a)
            labels.append(label)
    if len(set(labels)) < 2:
        raise ValueError("agreement needs present and absent samples whose expressions have two attribute words")
    threshold = presence.youden_threshold(np.array(values), np.array(labels))
    fitted = cfg.replace(**{"presence.agreement_threshold": threshold})
    report = {
        "rule": "agreement",
        "roc_auc": presence.roc_auc(np.array(values), np.array(labels)),
        "threshold": threshold,
        "word_blocks": list(word_blocks) if word_blocks else "captured",
        "samples": len(values),
        "skipped_one_word": len(samples) - len(values),
    }
    return fitted, report


MASK_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
REFINE_RADII = (2.0, 4.0, 6.0)  # token cells; refinement off is always a candidate too


def fit_masks(
    grounder, samples, cfg: GroundingConfig, thresholds=MASK_THRESHOLDS, radii=REFINE_RADII
) -> tuple[GroundingConfig, dict]:
    """Pick the map threshold and the heatmap refinement (off, or a guided filter of each radius)
    maximising mean IoU of the map-threshold masks of ``(image, sentence, mask)`` samples. Maps
    are made once; each candidate only reruns heatmap → prompts → mask. Ties keep the earlier
    candidate (refinement off first, thresholds in the given order)."""
    from grounding.segment.segmenters import mask_iou

    items = []
    for image, sentence, mask in tqdm(samples, desc="calibrate: masks", leave=False):
        items.append((grounder.referent_maps([(image, sentence)], cfg)[0], np.asarray(mask, dtype=bool)))

    def miou(c: GroundingConfig) -> float:
        return float(
            np.mean([mask_iou(grounder.segment_map(it, c, use_segmenter=False)[0].mask, gt) for it, gt in items])
        )

    refines = [{"refine.enabled": False}] + [{"refine.enabled": True, "refine.radius": r} for r in radii]
    scores = [(miou(c), c) for c in (cfg.replace(threshold=t, **r) for r in refines for t in thresholds)]
    now = miou(cfg)
    best, fitted = max(scores, key=lambda x: x[0])  # max keeps the first of equal scores
    if best <= now:
        fitted, best = cfg, now
    report = {
        "miou_before": now,
        "miou_after": best,
        "threshold": fitted.threshold,
        "refine": dataclasses.asdict(fitted.refine),
        "samples": len(items),
    }
    return fitted, report


RELATIVE_PEAKS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def fit_instances(
    grounder, samples, relative_peaks=RELATIVE_PEAKS, min_t_acc: float = 0.0, use_segmenter: bool = True
) -> tuple[GroundingConfig, dict]:
    """Generalized referring on ``(image, sentence, mask, no_target)`` samples (a gRefCOCO-layout
    set): the presence model refitted on target vs no-target samples over every presence feature
    (the per-head statistics included), then ``instances.min_relative_peak`` and the presence
    threshold chosen together to maximise gIoU with ``instances="all"``, among thresholds that
    keep T-acc ≥ ``min_t_acc`` (equal gIoU: the higher relative peak, the fewer spurious
    instances). Maps are made once; each candidate reruns only the mask stage, and the threshold
    only decides which predictions become empty."""
    from eval import metrics
    from grounding.readout import presence

    cfg = grounder.config.replace(**{"instances.mode": "all"})
    items = []
    for image, sentence, mask, no_target in tqdm(samples, desc="calibrate: instances", leave=False):
        item = grounder.map_stage([(image, sentence)], cfg, head_stats=True)[0]
        items.append((item, np.asarray(mask, dtype=bool), bool(no_target)))
    labels = [0 if nt else 1 for _, _, nt in items]
    feats = [grounder.segment_map(it, cfg, use_segmenter)[0].features for it, _, _ in items]
    fitted, report = presence.fit(feats, labels, l2=1.0, head_stats=True)
    scores = np.array([presence.score(f, fitted) for f in feats])
    # Per candidate relative peak: each sample's (I, U, IoU) when predicted non-empty (presence aside).
    open_cfg = cfg.replace(presence={**dataclasses.asdict(fitted), "threshold": 0.0})
    per_peak = {}
    for rp in sorted(relative_peaks, reverse=True):
        c = open_cfg.replace(**{"instances.min_relative_peak": rp})
        rows = []
        for it, gt, nt in items:
            r = grounder.segment_map(it, c, use_segmenter)[0]
            pred = r.mask if r.present else np.zeros_like(r.mask)
            rows.append(metrics.gref_sample(pred, gt, nt) + (not pred.any(),))
        per_peak[rp] = rows
    nt = np.array([n for _, _, n in items])
    thresholds = np.unique(np.concatenate([[0.0], scores]))
    best = None
    for rp, rows in per_peak.items():
        iou_on = np.array([r[2] for r in rows])
        empty_on = np.array([r[3] for r in rows])
        for t in thresholds:
            empty = empty_on | (scores < t)
            iou = np.where(empty, nt.astype(float), iou_on)
            t_acc = float((~empty[~nt]).mean()) if (~nt).any() else 1.0
            if t_acc < min_t_acc:
                continue
            giou = float(iou.mean())
            if best is None or giou > best[0] + 1e-12:
                n_acc = float(empty[nt].mean()) if nt.any() else 0.0
                best = (giou, rp, float(t), t_acc, n_acc)
    if best is None:
        raise ValueError(f"no threshold keeps T-acc ≥ {min_t_acc} on these samples")
    giou, rp, t, t_acc, n_acc = best
    fitted.threshold = t
    out = grounder.config.replace(presence=dataclasses.asdict(fitted), **{"instances.min_relative_peak": rp})
    report.update(
        {
            "presence_threshold": t,
            "min_relative_peak": rp,
            "giou": giou,
            "t_acc": t_acc,
            "n_acc": n_acc,
            "samples": len(items),
            "no_target": int(nt.sum()),
        }
    )
    report.pop("threshold", None)
    return out, report
