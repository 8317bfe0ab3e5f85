"""Response documents (JSON-ready dicts) shared by REST and gRPC."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
from PIL import Image

from ..pipeline.result import GroundingResult, instance_doc, mask_to_rle, overlay  # noqa: F401  (overlay: the /render PNG)
from .schema import Options


def png_bytes(arr: np.ndarray) -> bytes:
    """An ``[H, W]`` or ``[H, W, 3]`` uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_base64(arr: np.ndarray) -> str:
    """``png_bytes`` as base64 text (JSON bodies)."""
    return base64.b64encode(png_bytes(arr)).decode("ascii")


def heatmap_u8(r: GroundingResult) -> np.ndarray:
    """The result's heatmap ``[H, W]`` in [0, 1] as 8-bit levels."""
    return np.round(r.heatmap * 255).astype(np.uint8)


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a bool mask as COCO polygons ``[x0, y0, x1, y1, ...]`` through boundary pixel centres."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(float)
        if len(pts) >= 3:
            polys.append([round(v, 1) for v in pts.reshape(-1).tolist()])
        else:  # a 1-2 pixel sliver: its pixel square
            x, y = pts.min(axis=0)
            x1, y1 = pts.max(axis=0) + 1
            polys.append([x, y, x1, y, x1, y1, x, y1])
    return polys


def result_doc(r: GroundingResult, opts: Options, binary: bool = False) -> dict:
    """One result as JSON-ready dict; PNGs base64 text (or raw bytes with ``binary``, for gRPC)."""
    png = png_bytes if binary else png_base64

    def segmentation(mask: np.ndarray) -> dict:
        """``mask`` ``[H, W]`` in the requested ``mask_format``: COCO RLE, polygons or a PNG."""
        h, w = mask.shape
        if opts.mask_format == "rle":
            return mask_to_rle(mask)
        if opts.mask_format == "polygon":
            return {"size": [h, w], "polygons": mask_polygons(mask)}
        return {"size": [h, w], "png": png(mask.astype(np.uint8) * 255)}

    seg = segmentation(r.mask)
    doc = {
        "expression": r.expression,
        "box": [round(float(v), 2) for v in r.box],
        "box_format": "xyxy",
        "score": round(float(r.score), 6),
        "segmentation": seg,
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in r.points],
        "point_labels": [int(v) for v in r.point_labels],
        "present": bool(r.present),
        "presence_score": round(float(r.presence_score), 6),
        "best_guess": r.best_guess,
        "segmenter": r.segmenter,  # where the mask came from: the segmenter, or the proposer ("regions", ...)
        "warnings": list(r.warnings),
        "instances": [instance_doc(i, segmentation(i.mask)) for i in r.instances],
    }
    if opts.return_mask_png:
        doc["mask_png"] = png(r.mask.astype(np.uint8) * 255)
    if opts.return_heatmap:
        doc["heatmap_png"] = png(heatmap_u8(r))
    return doc


def heatmap_doc(r: GroundingResult, opts: Options) -> dict:
    """One /ground heatmap entry: the map as a PNG or as floats (``opts.heatmap_format``), its size and peak."""
    h, w = r.heatmap.shape
    if opts.heatmap_format == "png":
        heat = {"format": "png", "size": [h, w], "data": png_base64(heatmap_u8(r))}
    else:
        heat = {"format": "array", "size": [h, w], "data": np.round(r.heatmap.astype(np.float64), 4).tolist()}
    peak = r.points[0].tolist() if len(r.points) else None
    return {"expression": r.expression, "heatmap": heat, "peak": peak, "warnings": list(r.warnings)}


def merged_timings(results: list[GroundingResult], t_start: float) -> dict[str, float]:
    """Per-stage timings of a request (max over its results) plus the request's total."""
    timings: dict[str, float] = {}
    for r in results:
        for k, v in r.timings_ms.items():
            timings[k] = max(timings.get(k, 0.0), v)
    timings["total"] = (time.perf_counter() - t_start) * 1000
    return {k: round(v, 2) for k, v in timings.items()}


def response(image: Image.Image, docs: list[dict], results: list[GroundingResult], t_start: float) -> dict:
    """The REST body of an image request: the image's size, one document per result, merged timings."""
    return {
        "image": {"width": image.width, "height": image.height},
        "results": docs,
        "timings_ms": merged_timings(results, t_start),
    }
