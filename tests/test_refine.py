"""Heatmap refinement: the guided filter on constructed images and maps."""

import numpy as np
import pytest
import torch
from PIL import Image

from grounding.config import RefineConfig
from grounding.segment import refine
from grounding.segment.prompts import mask_iou, region_at_peak


def _disc_scene(size: int = 64, grid: int = 16):
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 30.5) ** 2 + (xx - 25.5) ** 2 <= 11**2
    img = np.full((size, size, 3), 225, dtype=np.uint8)
    img[disc] = (200, 40, 40)
    cell = size // grid
    centres = disc[cell // 2 :: cell, cell // 2 :: cell]  # token cells whose centre is on the disc
    return Image.fromarray(img), disc, torch.from_numpy(centres.astype(np.float32)).reshape(-1)


def test_refined_heatmap_snaps_to_the_object_edge():
    image, disc, tokens = _disc_scene()
    plain = refine.heatmap(tokens, (16, 16), image, RefineConfig(enabled=False))
    refined = refine.heatmap(tokens, (16, 16), image, RefineConfig(enabled=True, radius=4, eps=0.01))
    assert refined.shape == plain.shape == (64, 64) and refined.dtype == np.float32
    assert 0.0 <= refined.min() and refined.max() == pytest.approx(1.0)
    before = mask_iou(region_at_peak(plain, 0.5), disc)
    after = mask_iou(region_at_peak(refined, 0.5), disc)
    assert after > 0.95 and after > before + 0.05, (before, after)


def test_guided_filter_with_a_flat_guide_is_a_box_blur():
    rng = np.random.RandomState(0)
    src = rng.rand(20, 24)
    flat = np.full((20, 24, 3), 0.5)
    out = refine.guided_filter(flat, src, radius=2, eps=0.01)
    assert np.allclose(out, refine.box_mean(refine.box_mean(src, 2), 2))


def test_guided_filter_keeps_a_map_that_is_a_linear_function_of_the_guide():
    rng = np.random.RandomState(1)
    guide = rng.rand(16, 16, 3)
    src = guide @ np.array([0.2, -0.5, 0.7]) + 0.1
    assert np.allclose(refine.guided_filter(guide, src, radius=3, eps=1e-8), src, atol=1e-4)


def test_large_images_are_filtered_at_a_bounded_size():
    """Over ``max_side`` the coefficients come from a downsampled pass (fast guided filter): the
    refined region of a 4× larger scene still snaps to the disc."""
    image, disc, tokens = _disc_scene()
    big = image.resize((256, 256), Image.NEAREST)
    big_disc = np.asarray(Image.fromarray(disc).resize((256, 256), Image.NEAREST))
    full = refine.heatmap(tokens, (16, 16), big, RefineConfig(enabled=True, max_side=1024))
    fast = refine.heatmap(tokens, (16, 16), big, RefineConfig(enabled=True, max_side=64))
    assert fast.shape == full.shape == (256, 256)
    assert mask_iou(region_at_peak(fast, 0.5), big_disc) > 0.93
    assert mask_iou(region_at_peak(fast, 0.5), region_at_peak(full, 0.5)) > 0.93
