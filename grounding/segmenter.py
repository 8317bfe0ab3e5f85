"""Segmenters: prompts + map → mask. SAM (segment-anything) or the map-threshold fallback."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .prompts import Prompts

SAM_TYPES = ("vit_h", "vit_l", "vit_b", "tiny")


@dataclass
class Segmentation:
    mask: np.ndarray  # bool [H, W]
    predicted_iou: float | None  # SAM's own IoU estimate for the chosen mask


def map_confidence(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Mean map value inside the mask minus mean outside, clipped to [0, 1] (0 for empty masks)."""
    if not mask.any():
        return 0.0
    inside = float(heatmap[mask].mean())
    outside = float(heatmap[~mask].mean()) if (~mask).any() else 0.0
    return float(np.clip(inside - outside, 0.0, 1.0))


def combined_score(heatmap: np.ndarray, seg: Segmentation) -> float:
    """Result score: map confidence, or its geometric mean with SAM's predicted IoU when present."""
    conf = map_confidence(heatmap, seg.mask)
    if seg.predicted_iou is None:
        return conf
    return float(np.sqrt(conf * float(np.clip(seg.predicted_iou, 0.0, 1.0))))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


class MapSegmenter:
    """No SAM: the mask is the thresholded map region around the peak."""

    name = "map-threshold"

    def __call__(self, image: np.ndarray, heatmap: np.ndarray, prompts: Prompts) -> Segmentation:
        return Segmentation(prompts.region.copy(), None)


def build_sam_tiny(checkpoint: str | None = None):
    """A small randomly initialised SAM of segment-anything's own classes (tests, benchmarks)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim = 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=1, embed_dim=32, img_size=1024, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=(0,),
            window_size=14, out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    if checkpoint is not None:
        sam.load_state_dict(_read_state_dict(checkpoint))
    return sam.eval()


def _read_state_dict(path: str | Path) -> dict:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def sam_type_from_name(path: str | Path) -> str:
    name = Path(path).name.lower()
    for t in SAM_TYPES:
        if t in name:
            return t
    raise ValueError(f"cannot tell the SAM model type from {Path(path).name!r}; name it ({', '.join(SAM_TYPES)})")


def load_sam(checkpoint: str | Path, model_type: str | None = None):
    """A segment-anything ``Sam`` from a checkpoint path (``.pth`` or ``.safetensors``)."""
    from segment_anything import sam_model_registry

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    model_type = model_type or sam_type_from_name(path)
    if model_type == "tiny":
        return build_sam_tiny(str(path))
    if model_type not in sam_model_registry:
        raise ValueError(f"unknown SAM model type {model_type!r}; choose one of {SAM_TYPES}")
    sam = sam_model_registry[model_type](checkpoint=None)
    sam.load_state_dict(_read_state_dict(path))
    return sam.eval()


class SamSegmenter:
    """SAM with point (and box) prompts; picks among its 3 masks by agreement with the map.

    Owns a ``SamPredictor``; the image embedding is cached for the last image seen, so several
    expressions on one image pay for the encoder once.
    """

    name = "sam"

    def __init__(self, sam, device: str | torch.device = "cpu", use_box: bool = True):
        from segment_anything import SamPredictor

        self.sam = sam.to(device).eval()
        self.predictor = SamPredictor(self.sam)
        self.use_box = use_box
        self._image_key: str | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, model_type: str | None = None, device: str = "cpu", **kw):
        return cls(load_sam(checkpoint, model_type), device, **kw)

    def set_image(self, image: np.ndarray) -> None:
        key = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape)
        if key != self._image_key:
            with torch.no_grad():
                self.predictor.set_image(image)
            self._image_key = key

    def __call__(self, image: np.ndarray, heatmap: np.ndarray, prompts: Prompts) -> Segmentation:
        self.set_image(image)
        box = np.array(prompts.box, dtype=np.float32) if self.use_box and prompts.region.any() else None
        with torch.no_grad():
            masks, scores, _ = self.predictor.predict(
                point_coords=prompts.points, point_labels=prompts.labels, box=box, multimask_output=True
            )
        agreement = [mask_iou(m, prompts.region) for m in masks]
        best = max(range(len(masks)), key=lambda i: (round(agreement[i], 6), float(scores[i])))
        return Segmentation(masks[best].astype(bool), float(scores[best]))


def make_segmenter(spec, device: str = "cpu"):
    """``None``/"" → map threshold; a path → SAM checkpoint; a segmenter object passes through."""
    if spec is None or spec == "":
        return MapSegmenter()
    if callable(spec):
        return spec
    return SamSegmenter.from_checkpoint(spec, device=device)
