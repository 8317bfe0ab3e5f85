"""Image input: any PIL mode, path or bytes → upright RGB, with size checks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 40_000_000


class ImageTooLarge(ValueError):
    """Raised for images over the pixel limit (a decompression-bomb guard)."""


def open_image(src: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read a path, bytes or PIL image and return it upright (EXIF orientation applied) in RGB.

    Handled: grayscale, palette, RGBA/LA (composited on white), CMYK, 16-bit and 32-bit integer
    or float images (scaled to 8 bit). Any size from 1×1 up to ``max_pixels`` is accepted.
    """
    if isinstance(src, Image.Image):
        im = src
    elif isinstance(src, np.ndarray):
        im = Image.fromarray(src)
    else:
        data = Path(src).read_bytes() if isinstance(src, (str, Path)) else bytes(src)
        if not data:
            raise ValueError("image is empty (0 bytes)")
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(str(e)) from None
        except Exception:  # PIL raises several types for unreadable data
            raise ValueError("cannot read image: unknown format or corrupt data") from None
    w, h = im.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"image is {w}×{h} = {w * h} pixels, over the limit of {max_pixels}")
    if w < 1 or h < 1:
        raise ValueError(f"image has no pixels ({w}×{h})")
    try:
        im.load()
        im = ImageOps.exif_transpose(im)
    except Exception as e:
        raise ValueError(f"cannot decode image: {e}") from None
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if im.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        else:
            arr = np.clip(arr, 0, hi) / hi * 255.0
        return Image.fromarray(np.round(arr).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
