"""SAM (segment-anything) → two ONNX graphs, exact at every image size.

- ``encoder.onnx``: ``image`` float32 ``[1, 3, 1024, 1024]`` (resized longest side, normalised,
  zero-padded, as ``Sam.preprocess`` leaves it) → ``image_embeddings`` ``[1, C, 64, 64]``.
- ``decoder.onnx``: ``image_embeddings``, ``point_coords`` ``[1, N, 2]`` (in the 1024 frame),
  ``point_labels`` ``[1, N]`` (1 positive, 0 negative, 2/3 box corners, -1 padding),
  ``mask_input`` ``[1, 1, 256, 256]``, ``has_mask_input`` ``[1]`` → ``low_res_masks``
  ``[1, 3, 256, 256]`` (logits) and ``iou_predictions`` ``[1, 3]``. ``N`` is dynamic, and so is
  the first axis of the prompts and outputs (``B`` prompt sets on one image decoded in one run:
  ``point_coords`` ``[B, N, 2]`` → ``low_res_masks`` ``[B, 3, 256, 256]``; manifest ``prompt_batch``).

Unlike segment-anything's ``SamOnnxModel``, nothing about the original image size is in the graph:
upscaling to the image happens outside (``grounding.segment.segmenters.upscale_masks``).
A ``manifest.json`` beside the graphs records model type, opset, precision, tensor names and
SHA-256 hashes; loading checks it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grounding.segment.manifest import FORMAT, MANIFEST, validate  # noqa: F401  (validate: re-exported)

from .onnx_graphs import export_graph, file_table, optimize_graph, quantize_graph, too_large

ENCODER_INPUTS, ENCODER_OUTPUTS = ["image"], ["image_embeddings"]
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["low_res_masks", "iou_predictions"]
# The transformer optimizer's fusion family for the ViT encoder (``onnx_graphs.optimize_graph``), and
# the fusion left out: its layer-norm fusions misread segment-anything's channel-first LayerNorm2d in
# the neck (as an RMS norm under ``vit`` / ``bert``, with the wrong broadcast under ``sam2``: outputs
# off by 36–100 % of their scale, measured on vit_b and the tiny SAM); the blocks' LayerNorms export
# as the native operator at opset 17 and need no fusion.
OPTIMIZER_MODEL_TYPE = "sam2"
OPTIMIZER_DISABLED = ("layer_norm",)


class EncoderGraph(nn.Module):
    def __init__(self, sam):
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder, with the prompt embedding written branch-free so the number
    of points can vary; numerically the same as ``PromptEncoder`` + ``MaskDecoder``."""

    def __init__(self, sam):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.img_size = float(sam.image_encoder.img_size)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        emb = pe.pe_layer._pe_encoding((coords + 0.5) / self.img_size)
        lab = labels.unsqueeze(-1).expand_as(emb)
        emb = emb * (lab != -1)
        emb = emb + pe.not_a_point_embed.weight * (lab == -1)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (lab == i)
        return emb

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        return has_mask_input * pe.mask_downscaling(mask_input) + (
            1 - has_mask_input
        ) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self.embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self.embed_mask(mask_input, has_mask_input),
        )
        return masks[:, 1:], iou[:, 1:]


def export_sam(
    sam,
    out: str | Path,
    model_type: str,
    opset: int = 17,
    fp16: bool = False,
    quantize: str | None = None,
    optimize: bool = False,
) -> dict:
    """Write ``encoder.onnx``, ``decoder.onnx`` (+ external data) and ``manifest.json`` to ``out``;
    ``optimize``: the encoder through onnxruntime's transformer optimizer (before quantizing)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sam = sam.eval().cpu()
    dtype = torch.float16 if fp16 else torch.float32
    if fp16:
        sam = sam.half()
    size = sam.image_encoder.img_size
    embed_dim = sam.prompt_encoder.embed_dim
    grid = sam.prompt_encoder.image_embedding_size
    large = too_large(sam.image_encoder, 2 if fp16 else 4)
    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantization {quantize!r}; only int8 is supported")
    if optimize and large:
        raise ValueError("the transformer optimizer is not applied to graphs with external data (over 2 GB)")
    files: dict[str, list[str]] = {}
    with torch.no_grad():
        files["encoder"] = export_graph(
            EncoderGraph(sam).eval(),
            (torch.zeros(1, 3, size, size, dtype=dtype),),
            out / "encoder.onnx",
            ENCODER_INPUTS,
            ENCODER_OUTPUTS,
            opset,
            None,
            large,
        )
        # Traced with two prompt sets, so the per-prompt repeat of the image embedding stays dynamic.
        dec_args = (
            torch.zeros(1, embed_dim, *grid, dtype=dtype),
            torch.zeros(2, 3, 2, dtype=dtype),
            torch.tensor([[1.0, 0.0, -1.0]] * 2, dtype=dtype),
            torch.zeros(1, 1, 4 * grid[0], 4 * grid[1], dtype=dtype),
            torch.zeros(1, dtype=dtype),
        )
        prompts = {
            "point_coords": {0: "prompts", 1: "num_points"},
            "point_labels": {0: "prompts", 1: "num_points"},
            "low_res_masks": {0: "prompts"},
            "iou_predictions": {0: "prompts"},
        }
        files["decoder"] = export_graph(
            DecoderGraph(sam).eval(),
            dec_args,
            out / "decoder.onnx",
            DECODER_INPUTS,
            DECODER_OUTPUTS,
            opset,
            prompts,
            False,
        )
    precision = "fp16" if fp16 else "fp32"
    optimized = None
    if optimize:
        probe = {"image": np.random.RandomState(0).randn(1, 3, size, size).astype(np.float16 if fp16 else np.float32)}
        optimized = optimize_graph(out / "encoder.onnx", OPTIMIZER_MODEL_TYPE, probe, OPTIMIZER_DISABLED)
    if quantize:
        for part in ("encoder", "decoder"):
            files[part] = quantize_graph(out / f"{part}.onnx", files[part])
        precision = "int8"
    manifest = {
        "format": FORMAT,
        "model_type": model_type,
        "opset": opset,
        "precision": precision,
        "image_size": size,
        "embedding_shape": [embed_dim, *grid],
        "low_res_size": [4 * grid[0], 4 * grid[1]],
        "pixel_mean": [float(v) for v in sam.pixel_mean.flatten()],
        "pixel_std": [float(v) for v in sam.pixel_std.flatten()],
        "mask_threshold": float(sam.mask_threshold),
        "prompt_batch": True,
        "graphs": {
            "encoder": {"inputs": ENCODER_INPUTS, "outputs": ENCODER_OUTPUTS},
            "decoder": {"inputs": DECODER_INPUTS, "outputs": DECODER_OUTPUTS},
        },
        "optimized": optimized,
        "files": file_table(out, [f for part in files.values() for f in part]),
        "torch": torch.__version__,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
