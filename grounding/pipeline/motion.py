"""Temporal aggregation of per-frame maps with motion compensation: each neighbour's map is moved by
the whole-token shift (``displacement``) that best lays it onto the centre frame's map around its
peak (``translate``), then the window is averaged with weights that fall off with distance
(``aggregate``). Maps are ``[gh, gw]`` token grids; shifts are whole tokens.
"""

from __future__ import annotations

import torch

from ..readout import maps


def translate(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``[gh, gw]`` map moved by (dy, dx) tokens; what enters from outside is 0."""
    out = torch.zeros_like(m)
    gh, gw = m.shape
    if abs(dy) >= gh or abs(dx) >= gw:
        return out
    ys, yd = (slice(0, gh - dy), slice(dy, gh)) if dy >= 0 else (slice(-dy, gh), slice(0, gh + dy))
    xs, xd = (slice(0, gw - dx), slice(dx, gw)) if dx >= 0 else (slice(-dx, gw), slice(0, gw + dx))
    out[yd, xd] = m[ys, xs]
    return out


def displacement(m: torch.Tensor, ref: torch.Tensor, reach: int, patch: int = 2) -> tuple[int, int]:
    """(dy, dx) within ±``reach`` tokens that best lays ``m`` ``[gh, gw]`` onto ``ref`` around
    ``ref``'s peak: the largest sum of ``ref × translate(m)`` over the (2·patch+1)² cells there.
    Ties go to the smaller move (no motion first)."""
    gh, gw = ref.shape
    py, px = divmod(int(ref.argmax()), gw)
    y0, y1, x0, x1 = max(0, py - patch), min(gh, py + patch + 1), max(0, px - patch), min(gw, px + patch + 1)
    tpl = ref[y0:y1, x0:x1]
    moves = sorted(
        ((dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)),
        key=lambda d: (abs(d[0]) + abs(d[1]), d),
    )
    best, best_score = (0, 0), -1.0
    for dy, dx in moves:
        score = float((tpl * translate(m, dy, dx)[y0:y1, x0:x1]).sum())
        if score > best_score:
            best, best_score = (dy, dx), score
    return best


def aggregate(
    token_maps: list[torch.Tensor],
    center: int,
    window: int,
    decay: float,
    grid: tuple[int, int] | None = None,
    motion: int = 0,
) -> torch.Tensor:
    """Weighted mean of normalised token maps around ``center``: weight ``decay**|d|`` for the
    frames within ``window`` that exist. ``[N]`` each → ``[N]``.

    With ``grid`` and ``motion`` > 0 the maps are motion-compensated first: a frame d steps away
    is moved by its ``displacement`` (at most ``motion·|d|`` tokens) onto the centre frame's map,
    so a moving referent adds up where it is now instead of smearing along its path, and a
    static look-alike beside it no longer collects every frame's mass."""
    lo, hi = max(0, center - window), min(len(token_maps) - 1, center + window)
    weights = torch.tensor([decay ** abs(i - center) for i in range(lo, hi + 1)], dtype=torch.float32)
    stack = torch.stack([maps.normalise(token_maps[i]) for i in range(lo, hi + 1)])
    if grid is not None and motion > 0:
        ref = stack[center - lo].reshape(grid)
        for k, i in enumerate(range(lo, hi + 1)):
            if i != center:
                m = stack[k].reshape(grid)
                stack[k] = translate(m, *displacement(m, ref, motion * abs(i - center))).reshape(-1)
    return (stack * weights[:, None]).sum(0) / weights.sum()
