"""Token map → heatmap at image size: bilinear upsampling, then (optionally) edge-aware refinement.

Attention maps live on the transformer's token grid (16 px cells for FLUX at 1024 px), so a
thresholded upsampled map has blocky, blurred edges. The guided filter (He, Sun & Tang, "Guided
Image Filtering", TPAMI 2013) re-fits the map locally as a linear function of the image's colours:
inside a window the output follows colour edges of the image and keeps the map's mean, so a
region that the map covers roughly snaps to the object's boundary. Window radius is given in
token cells, so the same setting means the same thing at every resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from ..config import RefineConfig
from ..readout import maps


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a ``(2r+1)²`` window of each pixel (reflected at the borders); ``[H, W, ...]``."""
    size = (2 * radius + 1, 2 * radius + 1) + (1,) * (x.ndim - 2)
    return np.asarray(ndimage.uniform_filter(x, size=size, mode="reflect"))


def guided_coefficients(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Window-averaged linear coefficients of the colour guided filter: ``src ≈ a·guide + b`` by
    ridge regression (``eps``) in every window, averaged over the windows holding each pixel.
    ``guide`` float ``[H, W, 3]`` in [0, 1], ``src`` ``[H, W]`` → (a ``[H, W, 3]``, b ``[H, W]``)."""
    g = guide.astype(np.float64)  # the filter's I
    p = src.astype(np.float64)
    mean_I = box_mean(g, radius)  # [H, W, 3]
    mean_p = box_mean(p, radius)
    cov_Ip = box_mean(g * p[..., None], radius) - mean_I * mean_p[..., None]
    var_I = box_mean(g[..., :, None] * g[..., None, :], radius) - mean_I[..., :, None] * mean_I[..., None, :]
    a = np.linalg.solve(var_I + eps * np.eye(3), cov_Ip[..., None])[..., 0]
    b = mean_p - (a * mean_I).sum(axis=-1)
    return box_mean(a, radius), box_mean(b, radius)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Colour guided filter ``[H, W, 3]``, ``[H, W]`` → float64 ``[H, W]``."""
    a, b = guided_coefficients(guide, src, radius, eps)
    return np.asarray((a * guide).sum(axis=-1) + b)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[H, W]`` or ``[H, W, C]`` to ``size`` = (H', W')."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0]
    return (out[0] if x.ndim == 2 else out.permute(1, 2, 0)).numpy()


def refine(image: np.ndarray, heatmap: np.ndarray, cfg: RefineConfig, cell: float) -> np.ndarray:
    """Guided-filter a heatmap ``[H, W]`` in [0, 1] by the RGB ``image`` ``[H, W, 3]`` (uint8);
    window radius ``cfg.radius`` token cells of ``cell`` pixels. Images with a side over
    ``cfg.max_side`` are filtered at that size and the coefficients upsampled (the fast guided
    filter, He & Sun, arXiv 1505.00996), so memory stays bounded. Returns float32 in [0, 1]."""
    guide = np.asarray(image, dtype=np.float32) / 255.0
    h, w = heatmap.shape
    scale = max(1.0, max(h, w) / cfg.max_side)
    radius = max(1, int(round(cfg.radius * cell / scale)))
    if scale > 1.0:
        low = (max(1, round(h / scale)), max(1, round(w / scale)))
        a, b = guided_coefficients(_resize(guide, low), _resize(heatmap, low), radius, cfg.eps)
        out = (_resize(a, (h, w)) * guide).sum(axis=-1) + _resize(b, (h, w))
    else:
        out = guided_filter(guide, heatmap, radius, cfg.eps)
    out = np.clip(out, 0.0, None)
    hi = float(out.max())
    return np.asarray(out / hi if hi > 0 else out, dtype=np.float32)


def heatmap(token_map: torch.Tensor, grid: tuple[int, int], image: Image.Image, cfg: RefineConfig) -> np.ndarray:
    """Token map ``[N]`` → float32 heatmap ``[H, W]`` in [0, 1] at the image's size, refined by
    the image when ``cfg.enabled``."""
    up = maps.to_image(token_map, grid, image.size)
    if not cfg.enabled:
        return up
    cell = image.size[1] / grid[0]
    return refine(np.asarray(image.convert("RGB")), up, cfg, cell)
