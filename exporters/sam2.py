"""A transformers SAM 2-family model (SAM 2 / 2.1, SAM 3's tracker, EdgeTAM) → two ONNX graphs and
its processor, exact to the torch model at the processor's input size.

- ``encoder.onnx``: ``pixel_values`` float32 ``[1, 3, S, S]`` (the processor's output: resized to
  S × S, normalised) → ``image_embeddings`` ``[1, C, S/16, S/16]``, ``high_res_feats_0``
  ``[1, C/8, S/4, S/4]``, ``high_res_feats_1`` ``[1, C/4, S/8, S/8]`` — ``get_image_embeddings``:
  the decoder's two high-resolution projections applied once per image, the no-memory embedding
  added.
- ``decoder.onnx``: those three, ``point_coords`` float32 ``[B, N, 2]`` (in the S frame, as the
  processor scales them), ``point_labels`` int64 ``[B, N]`` (1 positive, 0 negative, 2 / 3 box
  corners, -1 the padding point), ``mask_input`` ``[1, 1, h, w]`` and ``has_mask_input`` ``[1]``
  → ``low_res_masks`` ``[B, 3, h, w]`` (logits), ``iou_predictions`` ``[B, 3]`` and
  ``object_score_logits`` ``[B, 1]``. ``B`` prompt sets and ``N`` points are dynamic.

transformers embeds points and a box through two branches (points padded with a not-a-point when
no box follows; a box as two corners and a not-a-point); both are the same sum per prompt token,
so the graph takes one token list — points, then the box's corners (labels 2, 3), then one padding
token (label -1) — and has no branch on which prompts are present. The processor is saved beside
the graphs: the runtime resizes, normalises, scales prompts and upscales masks with the very code
the torch path uses (``grounding.segment.onnx_sam2``), so the two agree to float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from grounding.segment.manifest import FORMAT_SAM2, MANIFEST
from grounding.segment.transformers_sam import FAMILIES

from .onnx_graphs import export_graph, file_table, optimize_graph, quantize_graph, relative_diff, run_graph, too_large

ENCODER_INPUTS = ["pixel_values"]
ENCODER_OUTPUTS = ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
DECODER_INPUTS = [*ENCODER_OUTPUTS, "point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["low_res_masks", "iou_predictions", "object_score_logits"]
# The optimizer's SAM 2 fusion family (Hiera's and the two-way transformer's attention, layer norm).
OPTIMIZER_MODEL_TYPE = "sam2"


class EncoderGraph(nn.Module):
    """``get_image_embeddings`` with its three maps as named outputs, largest-stride first."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat_s0, feat_s1, embedding = self.model.get_image_embeddings(pixel_values)
        return embedding, feat_s0, feat_s1


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder over one token list per prompt set (see the module docstring);
    numerically the model's own ``forward`` given ``image_embeddings``."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.size = float(model.prompt_encoder.input_image_size)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``coords`` ``[1, B, N, 2]`` (S frame), ``labels`` ``[1, B, N]`` → tokens ``[1, B, N, C]``."""
        pe = self.model.prompt_encoder
        emb = pe.shared_embedding((coords + 0.5) / self.size)
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == -1, pe.not_a_point_embed.weight, emb)
        return emb + pe.point_embed(labels.clamp(min=0)) * (lab >= 0)

    def forward(
        self,
        image_embeddings,
        high_res_feats_0,
        high_res_feats_1,
        point_coords,
        point_labels,
        mask_input,
        has_mask_input,
    ):
        pe = self.model.prompt_encoder
        sparse = self.embed_points(point_coords.unsqueeze(0), point_labels.unsqueeze(0))
        dense = has_mask_input * pe.mask_embed(mask_input) + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(
            1, -1, 1, 1
        )
        masks, iou, _, objects = self.model.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=self.model.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            high_resolution_features=[high_res_feats_0, high_res_feats_1],
        )
        return masks[0], iou[0], objects[0]


def probes(model: Any, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inputs to check the graphs on: a random image at the model's size, and two prompt sets (points,
    a box's corners, the padding token) with a random mask prompt on that image's torch embedding."""
    rng = np.random.RandomState(seed)
    size = int(model.prompt_encoder.input_image_size)
    low = tuple(int(v) for v in model.prompt_encoder.mask_input_size)
    image = rng.randn(1, 3, size, size).astype(np.float32)
    with torch.no_grad():
        embedding, feat_s0, feat_s1 = EncoderGraph(model).eval()(torch.from_numpy(image))
    decoder = {
        "image_embeddings": embedding.numpy(),
        "high_res_feats_0": feat_s0.numpy(),
        "high_res_feats_1": feat_s1.numpy(),
        "point_coords": (rng.rand(2, 4, 2) * size).astype(np.float32),
        "point_labels": np.array([[1, 2, 3, -1], [1, 0, 1, -1]], dtype=np.int64),
        "mask_input": rng.randn(1, 1, *low).astype(np.float32),
        "has_mask_input": np.ones(1, np.float32),
    }
    return {"pixel_values": image}, decoder


def torch_decoder(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What the torch decoder graph module computes on ``feeds``."""
    with torch.no_grad():
        return [t.numpy() for t in DecoderGraph(model).eval()(*(torch.from_numpy(feeds[n]) for n in DECODER_INPUTS))]


def export_sam2(
    model: Any,
    processor: Any,
    out: str | Path,
    opset: int = 17,
    quantize: str | None = None,
    optimize: bool = True,
    source: str | None = None,
    tolerance: float = 1e-4,
) -> dict:
    """Write ``encoder.onnx``, ``decoder.onnx``, the processor's files and ``manifest.json`` to
    ``out``. ``optimize``: both graphs through onnxruntime's transformer optimizer; ``quantize``
    ``"int8"``: then dynamically quantized. Each fp32 graph must compute what the torch model does
    on ``probes`` (``onnx_graphs.relative_diff`` ≤ ``tolerance``, else ``ValueError``); the int8
    graphs' distance from torch is measured and recorded, not asserted. ``source``: the hub id or
    folder, for the manifest."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in FAMILIES:
        raise ValueError(f"a {model_type!r} model is not a SAM 2-family segmenter ({', '.join(FAMILIES)})")
    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantization {quantize!r}; only int8 is supported")
    large = too_large(model)
    if optimize and large:
        raise ValueError("the transformer optimizer is not applied to graphs with external data (over 2 GB)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    size = int(model.prompt_encoder.input_image_size)
    low = tuple(int(v) for v in model.prompt_encoder.mask_input_size)
    feeds = dict(zip(("encoder", "decoder"), probes(model)))
    embedding, feat_s0, feat_s1 = (feeds["decoder"][n].shape for n in ENCODER_OUTPUTS)
    with torch.no_grad():
        files = {
            "encoder": export_graph(
                EncoderGraph(model).eval(),
                (torch.zeros(1, 3, size, size),),
                out / "encoder.onnx",
                ENCODER_INPUTS,
                ENCODER_OUTPUTS,
                opset,
                None,
                large,
            )
        }
        # Traced with two prompt sets, so the per-prompt repeat of the image embedding stays dynamic.
        prompts = {
            "point_coords": {0: "prompts", 1: "num_points"},
            "point_labels": {0: "prompts", 1: "num_points"},
            "low_res_masks": {0: "prompts"},
            "iou_predictions": {0: "prompts"},
            "object_score_logits": {0: "prompts"},
        }
        dec_args = (
            torch.zeros(embedding),
            torch.zeros(feat_s0),
            torch.zeros(feat_s1),
            torch.zeros(2, 4, 2),
            torch.tensor([[1, 0, 2, 3], [1, 1, 0, -1]], dtype=torch.int64),
            torch.zeros(1, 1, *low),
            torch.zeros(1),
        )
        files["decoder"] = export_graph(
            DecoderGraph(model).eval(),
            dec_args,
            out / "decoder.onnx",
            DECODER_INPUTS,
            DECODER_OUTPUTS,
            opset,
            prompts,
            False,
        )
    optimized = None
    if optimize:
        optimized = {part: optimize_graph(out / f"{part}.onnx", OPTIMIZER_MODEL_TYPE, feeds[part]) for part in files}
    reference = {  # the encoder's: what ``probes`` computed in torch for the decoder's inputs
        "encoder": [feeds["decoder"][n] for n in ENCODER_OUTPUTS],
        "decoder": torch_decoder(model, feeds["decoder"]),
    }
    parity = {part: relative_diff(run_graph(out / f"{part}.onnx", feeds[part]), reference[part]) for part in files}
    for part, diff in parity.items():
        if diff > tolerance:
            raise ValueError(f"{part}.onnx differs from the torch model by {diff:.2e} of its outputs' scale")
    if quantize:
        for part in files:
            files[part] = quantize_graph(out / f"{part}.onnx", files[part])
        parity = {p: relative_diff(run_graph(out / f"{p}.onnx", feeds[p]), reference[p]) for p in files}
    before = {p.name for p in out.iterdir()}
    processor.save_pretrained(str(out))
    processor_files = sorted({p.name for p in out.iterdir()} - before - {MANIFEST})
    family = FAMILIES[model_type]
    manifest = {
        "format": FORMAT_SAM2,
        "model_type": model_type,
        "family": family.name,
        "processor": family.processor,
        "source": source,
        "opset": opset,
        "precision": quantize or "fp32",
        "image_size": size,
        "embedding_shape": list(embedding[1:]),
        "low_res_size": list(low),
        "prompt_batch": True,
        "optimized": optimized,
        # max |onnx − torch| / max |torch| on the probes, per graph (asserted ≤ tolerance for fp32)
        "relative_diff_to_torch": parity,
        "graphs": {
            "encoder": {"inputs": ENCODER_INPUTS, "outputs": ENCODER_OUTPUTS},
            "decoder": {"inputs": DECODER_INPUTS, "outputs": DECODER_OUTPUTS},
        },
        "files": file_table(out, [f for part in files.values() for f in part] + processor_files),
        "torch": torch.__version__,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
