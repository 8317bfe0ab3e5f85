"""Map operations (RefAM): pure functions from captured attention to the referent map.

Shapes: ``A`` is ``[L, V, H, N, C]`` — blocks × noise levels × heads × image tokens × kept text
positions — for ONE sample; ``kinds`` ``[C]`` gives each column's kind (see ``tokens``).
Order of operations in ``referent_map``: sinks → redistribution → token weighting (magnets,
stop words, padding and EOS get weight 0) → per-map normalisation → weighted mean over heads and
blocks, mean over noise levels → grid → upsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import GroundingConfig, SinkConfig
from .tokens import MAGNET, PAD, PromptTokens

_EPS = 1e-12


def valid_columns(kinds: np.ndarray) -> torch.Tensor:
    """bool ``[C]``: columns that hold a real token of this sample (not padding)."""
    return torch.from_numpy(np.asarray(kinds) != PAD)


def find_sinks(A: torch.Tensor, valid: torch.Tensor, threshold: float, quantile: float) -> torch.Tensor:
    """bool ``[..., N]``: image tokens bright in the column of (nearly) every valid text token.

    Each valid column is normalised over image tokens (uniform = 1/N); a token is a sink when
    its share × N, at ``quantile`` over the valid columns, exceeds ``threshold``.
    """
    n = A.shape[-2]
    cols = A[..., valid]
    if cols.shape[-1] == 0:
        return torch.zeros(A.shape[:-1], dtype=torch.bool)
    share = cols / cols.sum(dim=-2, keepdim=True).clamp_min(_EPS) * n
    return torch.quantile(share, quantile, dim=-1) > threshold


def handle_sinks(A: torch.Tensor, kinds: np.ndarray, cfg: SinkConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Suppress or redirect global attention sinks; returns (A', sink mask ``[L, V, H, N]``).

    ``suppress``: zero the sink rows, then rescale each column to its former total mass.
    ``redirect``: move the sink rows' mass on non-magnet columns onto the magnet columns, split
    evenly (falls back to ``suppress`` when the prompt has no magnets).
    Blocks shallower than ``cfg.min_depth`` (fraction of depth) are left alone.
    """
    valid = valid_columns(kinds)
    sinks = find_sinks(A, valid, cfg.threshold, cfg.quantile)
    first = int(np.ceil(cfg.min_depth * A.shape[0]))
    sinks[:first] = False
    if not sinks.any():
        return A, sinks
    A = A.clone()
    magnets = torch.from_numpy(np.asarray(kinds) == MAGNET)
    rows = sinks.unsqueeze(-1)  # [L, V, H, N, 1]
    if cfg.mode == "redirect" and magnets.any():
        movable = valid & ~magnets
        moved = (A * rows * movable).sum(dim=-1, keepdim=True)  # [L, V, H, N, 1]
        A = torch.where(rows & movable, torch.zeros_like(A), A)
        A = A + moved * magnets / magnets.sum()
        return A, sinks
    if cfg.mode not in ("suppress", "redirect"):
        raise ValueError(f"unknown sink mode {cfg.mode!r}")
    before = A.sum(dim=-2, keepdim=True)
    A = torch.where(rows, torch.zeros_like(A), A)
    A = A * (before / A.sum(dim=-2, keepdim=True).clamp_min(_EPS))
    return A, sinks


def redistribute(A: torch.Tensor, kinds: np.ndarray) -> torch.Tensor:
    """Per image token, renormalise over the valid text columns (magnets included)."""
    valid = valid_columns(kinds)
    A = A * valid
    return A / A.sum(dim=-1, keepdim=True).clamp_min(_EPS)


def token_map(A: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over text columns ``[..., N, C] → [..., N]``; weights ``[C]`` ≥ 0."""
    w = weights.to(A.dtype)
    if float(w.sum()) <= 0:
        raise ValueError("no content token has a position in the captured text")
    return (A * w).sum(dim=-1) / w.sum()


def normalise(M: torch.Tensor) -> torch.Tensor:
    """Each map (last dim = image tokens) scaled to sum 1, so blocks and heads weigh alike."""
    return M / M.sum(dim=-1, keepdim=True).clamp_min(_EPS)


def normalised_weights(block_w: torch.Tensor, head_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block weights ``[L]`` scaled to sum 1, and each block's head weights ``[L, H]`` too."""
    return block_w / block_w.sum().clamp_min(_EPS), head_w / head_w.sum(dim=-1, keepdim=True).clamp_min(_EPS)


def aggregate(M: torch.Tensor, block_w: torch.Tensor, head_w: torch.Tensor) -> torch.Tensor:
    """``[..., L, V, H, N] → [..., N]``: weighted mean over heads within a block (``head_w``
    ``[L, H]``), then over blocks (``block_w`` ``[L]``), plain mean over noise levels."""
    bw, hw = normalised_weights(block_w, head_w)
    per_block = (M * hw[:, None, :, None]).sum(dim=-2)  # [..., L, V, N]
    return (per_block * bw[:, None, None]).sum(dim=-3).mean(dim=-2)


def upsample(m: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Token map ``[N]`` → float32 ``[H, W]`` at image ``size`` = (W, H), bilinear, values kept."""
    g = m.reshape(1, 1, *grid).float()
    return F.interpolate(g, size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0]


def to_image(m: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Token map ``[N]`` → float32 ``[H, W]`` in [0, 1] at image ``size`` = (W, H), bilinear."""
    up = upsample(m, grid, size)
    lo, hi = up.min(), up.max()
    up = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
    return up.numpy().astype(np.float32)


def weights_for(names: list[str], n_heads: int, cfg: GroundingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Block weights ``[L]`` and head weights ``[L, H]`` from the config (missing = 1)."""
    bw = torch.tensor([float(cfg.block_weights.get(n, 1.0)) for n in names])
    hw = torch.tensor([[float(cfg.head_weights.get(f"{n}/{h}", 1.0)) for h in range(n_heads)] for n in names])
    return bw, hw


@dataclass
class CleanedAttention:
    """Attention of one sample after sink handling and redistribution (``[L, V, H, N, C]``)."""

    A: torch.Tensor
    sinks: torch.Tensor  # bool [L, V, H, N]
    kinds: np.ndarray  # [C]
    columns: np.ndarray  # [C] text positions


def clean(A: torch.Tensor, kinds: np.ndarray, columns: np.ndarray, cfg: GroundingConfig) -> CleanedAttention:
    """Sink handling then redistribution, each as switched in ``cfg``."""
    sinks = torch.zeros(A.shape[:-1], dtype=torch.bool)
    if cfg.sinks.enabled:
        A, sinks = handle_sinks(A, kinds, cfg.sinks)
    if cfg.redistribution.enabled:
        A = redistribute(A, kinds)
    return CleanedAttention(A, sinks, kinds, columns)


def column_weights(tokens: PromptTokens, columns: np.ndarray, cfg: GroundingConfig) -> torch.Tensor:
    """float ``[C]``: content tokens 1, head noun ``head_noun_weight``, complement words
    ``complement_weight``, everything else 0."""
    m = cfg.magnets
    return torch.from_numpy(tokens.token_weights(m.head_noun_weight, m.complement_weight)[columns])


def referent_maps_per_component(cleaned: CleanedAttention, weights: torch.Tensor) -> torch.Tensor:
    """Normalised referent map of every (block, level, head): ``[L, V, H, N]``."""
    return normalise(token_map(cleaned.A, weights))


def referent_map(
    A: torch.Tensor, tokens: PromptTokens, columns: np.ndarray, block_names: list[str], cfg: GroundingConfig
) -> tuple[torch.Tensor, CleanedAttention]:
    """The referent token map ``[N]`` of one sample, and the cleaned attention it came from."""
    cleaned = clean(A, tokens.kinds[columns], columns, cfg)
    per = referent_maps_per_component(cleaned, column_weights(tokens, columns, cfg))
    bw, hw = weights_for(block_names, A.shape[2], cfg)
    return aggregate(per, bw, hw), cleaned
