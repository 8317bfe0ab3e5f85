"""The Grounder end to end on a tiny FLUX model: determinism, bad input, SAM, batching."""

import io

import numpy as np
import pytest
from PIL import Image

from fixtures import scene
from grounding import Grounder
from grounding.images import ImageTooLarge, open_image


def test_segment_result_shapes(flux_grounder, scene_image):
    r = flux_grounder.segment(scene_image, "the red circle on the left")
    h, w = scene_image.height, scene_image.width
    assert r.mask.shape == (h, w) and r.mask.dtype == bool and r.mask.any()
    assert r.heatmap.shape == (h, w) and r.heatmap.dtype == np.float32
    assert 0.0 <= r.heatmap.min() and r.heatmap.max() == 1.0
    x0, y0, x1, y1 = r.box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    ys, xs = np.nonzero(r.mask)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert 0.0 <= r.score <= 1.0
    assert r.points.shape == (1, 2) and r.point_labels.tolist() == [1]
    px, py = r.points[0]
    assert r.heatmap[int(py), int(px)] == 1.0  # the positive point is the peak
    assert set(r.timings_ms) >= {"transformer", "maps", "segmenter"}


def test_same_inputs_same_outputs(flux_grounder, scene_image):
    a = flux_grounder.segment(scene_image, "blue square")
    b = flux_grounder.segment(scene_image.copy(), "blue square")
    assert np.array_equal(a.heatmap, b.heatmap) and np.array_equal(a.mask, b.mask) and a.score == b.score


def test_seed_and_noise_level_change_the_map(flux_grounder, scene_image):
    a = flux_grounder.segment(scene_image, "blue square").heatmap
    b = flux_grounder.segment(scene_image, "blue square", seed=1).heatmap
    c = flux_grounder.segment(scene_image, "blue square", timesteps=[0.7]).heatmap
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_batch_equals_single(flux_grounder):
    pairs = [(scene(seed=1), "red circle"), (scene(seed=2), "the blue square"), (scene(80, 40), "red circle")]
    batch = flux_grounder.segment_batch(pairs)
    for (im, e), r in zip(pairs, batch):
        single = flux_grounder.segment(im, e)
        np.testing.assert_allclose(r.heatmap, single.heatmap, atol=1e-4)


def test_attention_maps_words_and_detail(flux_grounder, scene_image):
    m = flux_grounder.attention_maps(scene_image, "the red circle", detail=True)
    assert m.words[:3] == ["the", "red", "circle"] and m.word_kinds[:3] == ["stop", "content", "content"]
    assert m.words[m.head_word] == "circle"
    assert m.word_maps.shape[0] == len(m.words) and m.word_maps.shape[1:] == m.grid
    np.testing.assert_allclose(m.word_maps.sum(axis=(1, 2)), 1.0, rtol=1e-4)
    np.testing.assert_allclose(m.referent.sum(), 1.0, rtol=1e-4)
    L, V, H, N, C = m.attention.shape
    assert L == len(m.block_names) and N == m.grid[0] * m.grid[1] and C == len(m.column_kinds)
    assert "magnet" in m.column_kinds and "pad" not in m.column_kinds


@pytest.mark.parametrize("bad", ["", "   ", "the of and", "!!!"])
def test_bad_expressions(flux_grounder, scene_image, bad):
    with pytest.raises(ValueError):
        flux_grounder.segment(scene_image, bad)


def test_overlong_expression_truncates_with_warning(flux_grounder, scene_image):
    with pytest.warns(UserWarning, match="truncated"):
        r = flux_grounder.segment(scene_image, " ".join(["the big red circle left of the blue square"] * 10))
    assert r.warnings and r.mask.shape == (48, 64)


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_image_modes_are_handled(flux_grounder, scene_image):
    rgb = np.asarray(scene_image)
    gray = scene_image.convert("L")
    rgba = scene_image.convert("RGBA")
    pal = scene_image.convert("P")
    i16 = Image.fromarray((np.asarray(gray).astype(np.uint16) * 257)).convert("I;16")
    cmyk = scene_image.convert("CMYK")
    for im in [gray, rgba, pal, i16, cmyk, _png(scene_image), _png(cmyk, format="JPEG")]:
        r = flux_grounder.segment(im, "red circle")
        assert r.mask.shape == rgb.shape[:2]
    assert np.abs(np.asarray(open_image(i16)).astype(int) - np.asarray(gray.convert("RGB")).astype(int)).max() <= 1


def test_exif_rotation_gives_displayed_orientation(flux_grounder, scene_image):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW to display
    data = _png(scene_image, format="JPEG", exif=exif)
    r = flux_grounder.segment(data, "red circle")
    assert r.mask.shape == (64, 48)  # displayed: portrait


def test_tiny_and_huge_images(flux_grounder):
    r = flux_grounder.segment(Image.new("RGB", (1, 1), (200, 10, 10)), "red circle")
    assert r.mask.shape == (1, 1)
    r = flux_grounder.segment(Image.new("RGB", (3000, 7), (200, 10, 10)), "red circle")
    assert r.mask.shape == (7, 3000)
    with pytest.raises(ImageTooLarge):
        flux_grounder.segment(Image.new("L", (4000, 3000)), "red circle", max_image_pixels=10_000_000)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_corrupt_bytes(flux_grounder, data):
    with pytest.raises(ValueError):
        flux_grounder.segment(data, "red circle")


def test_sam_segmenter_from_checkpoint_path(tiny_flux_dir, sam_tiny_path, scene_image):
    g = Grounder.from_pretrained(tiny_flux_dir, segmenter=str(sam_tiny_path), device="cpu")
    a, b = g.segment_batch([(scene_image, "red circle"), (scene_image, "blue square")])
    for r in (a, b):
        assert r.segmenter == "sam" and r.mask.shape == (48, 64)
        assert 0.0 <= r.score <= 1.0
    again = g.segment(scene_image, "red circle")
    assert np.array_equal(again.mask, a.mask)


def test_sd3_grounder(tiny_sd3_dir, scene_image):
    g = Grounder.from_pretrained(tiny_sd3_dir, device="cpu")
    r = g.segment(scene_image, "the blue square", sinks__mode="suppress")
    assert r.mask.shape == (48, 64) and r.mask.any()


def test_config_overrides_are_checked(flux_grounder, scene_image):
    with pytest.raises(ValueError, match="unknown grounding option"):
        flux_grounder.segment(scene_image, "red circle", not_an_option=1)
