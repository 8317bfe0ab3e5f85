"""Prompt-masked views (AGLA, arXiv 2406.12718) for grounding: pure helpers.

The global map G (token grid, ``[N]``, sums to 1) chooses which image tokens stay; the others are
filled (blurred image or mean colour) or hidden from the text queries; a second pass on that
view gives the local map L; ``assemble`` combines them. The grounder runs the passes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from ..config import ViewsConfig
from .maps import normalise

FILLS = ("blur", "mean", "attention")


def smooth(m: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """Gaussian blur (``sigma`` in tokens, edges replicated) of a token map ``[N]`` → ``[N]``."""
    if sigma <= 0:
        return m
    r = max(1, int(math.ceil(2 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    g = F.pad(m.float().reshape(1, 1, *grid), (r, r, r, r), mode="replicate")
    g = F.conv2d(F.conv2d(g, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return g.reshape(-1)


def match_score(m: torch.Tensor) -> float:
    """How much the map commits to a region, in [0, 1]: the mass on its top 10 % of tokens,
    rescaled so a uniform map gives 0 and a map with all mass there gives 1 (AGLA's ``s``)."""
    n = m.numel()
    k = max(1, n // 10)
    top = float(torch.topk(normalise(m.float()), k).values.sum())
    return float(np.clip((top - k / n) / (1 - k / n), 0.0, 1.0))


def keep_tokens(m: torch.Tensor, grid: tuple[int, int], cfg: ViewsConfig) -> torch.Tensor:
    """bool ``[N]``: the tokens the local view keeps (top fraction of the smoothed map)."""
    keep = cfg.keep if cfg.keep is not None else 1.0 - match_score(m) / 2
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"views.keep must be in (0, 1], got {keep}")
    s = smooth(m, grid, cfg.smooth)
    k = max(1, int(round(keep * s.numel())))
    out = torch.zeros(s.numel(), dtype=torch.bool)
    out[torch.topk(s, k).indices] = True
    return out


def masked_view(image: Image.Image, keep: torch.Tensor, grid: tuple[int, int], fill: str) -> Image.Image:
    """The image with dropped token cells replaced by a blurred copy (``blur``) or the image's
    mean colour (``mean``): fills that stay inside what a VAE has seen, unlike black."""
    if fill not in ("blur", "mean"):
        raise ValueError(f"masked_view fill must be 'blur' or 'mean', got {fill!r}")
    rgb = image.convert("RGB")
    w, h = rgb.size
    cells = Image.fromarray(keep.reshape(grid).numpy().astype(np.uint8) * 255)
    mask = np.asarray(cells.resize((w, h), Image.Resampling.NEAREST)) > 0
    arr = np.asarray(rgb)
    if fill == "blur":
        other = np.asarray(rgb.filter(ImageFilter.GaussianBlur(radius=max(w, h) / 16)))
    else:
        other = np.broadcast_to(arr.reshape(-1, 3).mean(axis=0).astype(np.uint8), arr.shape)
    return Image.fromarray(np.where(mask[..., None], arr, other).astype(np.uint8))


def assemble(G: torch.Tensor, L: torch.Tensor, cfg: ViewsConfig) -> torch.Tensor:
    """``log F = log G + alpha·log(L + lam/N)`` on ``G ≥ beta·max G``, 0 elsewhere; sums to 1.

    ``G``, ``L``: ``[..., N]`` maps that sum to 1. ``lam`` is in units of the uniform level
    ``1/N``, so a local map that is flat where G is high leaves G's ranking alone.
    """
    n = G.shape[-1]
    support = G >= cfg.beta * G.amax(dim=-1, keepdim=True)
    logf = torch.log(G.clamp_min(1e-30)) + cfg.alpha * torch.log(L + cfg.lam / n)
    logf = torch.where(support, logf, torch.full_like(logf, -math.inf))
    return torch.softmax(logf, dim=-1)


def agreement(G: torch.Tensor, L: torch.Tensor) -> float:
    """Cosine similarity of the global and local maps (1 = the local view saw the same thing)."""
    g, l_ = G.float().flatten(), L.float().flatten()
    return float((g @ l_) / (g.norm() * l_.norm()).clamp_min(1e-12))
