"""Training the answer head (``grounding.readout.answer_head.AnswerHead``): the DiT stays
frozen, its per-(block, level, head) maps are computed once, BCE + Dice on the token-grid mask."""

from __future__ import annotations

import numpy as np
import torch

from grounding.config import GroundingConfig
from grounding.images import open_image
from grounding.readout import answers
from grounding.readout.answer_head import AnswerHead, SentenceEncoder, loss_fn, prior_weights, target_cells


def head_inputs(
    grounder, image, text: str, cfg: GroundingConfig
) -> tuple[torch.Tensor, tuple[int, int], list[str], tuple[int, int]]:
    """Channel maps ``[C, h, w]`` of one (image, text), the grid, block names and (levels, heads)."""
    per, grid, names = grounder.component_maps(image, text, cfg)
    L, V, H, N = per.shape
    return per.reshape(L * V * H, *grid), grid, names, (V, H)


def train(
    grounder,
    samples: list[tuple[object, str, np.ndarray]],
    epochs: int = 30,
    lr: float = 3e-3,
    batch: int = 16,
    seed: int = 0,
) -> tuple[AnswerHead, dict]:
    """Fit a head on (image, "question answer" text, bool mask) samples with BCE + Dice; the DiT
    stays frozen (its maps are computed once). Returns the head and a report (loss before/after)."""
    cfg = grounder.config
    torch.manual_seed(seed)
    enc = SentenceEncoder()
    chans, targets, generics, names, shape = [], [], [], None, None
    for image, text, mask in samples:
        ch, grid, names, shape = head_inputs(grounder, image, text, cfg)
        chans.append(ch)
        targets.append(target_cells(mask, grid))
        generics.append(
            grounder.generic_maps([open_image(image, cfg.max_image_pixels)], cfg)[0].reshape(grid)
            if cfg.answer.contrast
            else None
        )
    if len({tuple(c.shape) for c in chans}) != 1:
        raise ValueError("training images must share one token grid (resize them to one aspect ratio)")
    X, Y = torch.stack(chans), torch.stack(targets)
    E = enc([t for _, t, _ in samples])
    head = AnswerHead(X.shape[1], E.shape[1], threshold=cfg.threshold, prior=prior_weights(cfg, names, *shape))

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        m, _ = head(X[idx], E[idx])
        if cfg.answer.contrast:
            m = torch.stack(
                [
                    answers.contrast(m[j].flatten(), generics[int(i)].flatten(), cfg.answer.percentile).view_as(m[j])
                    for j, i in enumerate(idx)
                ]
            )
        return loss_fn(head.mask_logits(m), Y[idx])

    everything = torch.arange(len(X))
    with torch.no_grad():
        before = float(batch_loss(everything))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=g).split(batch):
            loss = batch_loss(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        after = float(batch_loss(everything))
    head.meta = {"block_names": names, "n_levels": shape[0], "n_heads": shape[1]}
    return head, {"samples": len(X), "loss_before": before, "loss_after": after, "epochs": epochs}
