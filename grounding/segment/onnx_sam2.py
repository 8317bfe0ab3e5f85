"""A SAM 2-family segmenter through onnxruntime, on an export from ``python -m exporters sam2``.

The export folder holds the encoder and prompt-decoder graphs, the model's processor and a
manifest (``manifest.FORMAT_SAM2``; every file hashed and checked on load). The processor does what
it does for the torch segmenter — resize and normalise the image, scale prompts to the model's
frame, upscale the low-res logits to the image — so only the two networks change hands and the
masks agree with ``TransformersSamSegmenter`` to float rounding. Prompts go to the decoder as one
token list per prompt set (points, the box's two corners with labels 2 / 3, one padding token
labelled -1), which is how transformers embeds them (``exporters/sam2.py``). Providers are chosen
explicitly (``segmenters.ort_graphs`` / ``ort_providers``: CUDA when onnxruntime-gpu finds a device, CPU last).
Multimask and score semantics are the family's (``transformers_sam``). Tracking (video
propagation) needs the torch video model: this segmenter has no ``tracker``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .manifest import FORMAT_SAM2, validate
from .segmenters import ort_graphs
from .transformers_sam import FAMILIES, ProcessorSegmenter


class OnnxSam2Segmenter(ProcessorSegmenter):
    """SAM 2 / SAM 3 tracker / EdgeTAM graphs and their processor: SAM's ``predict`` contract."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None, use_box: bool = True):
        import transformers

        self.folder = Path(folder)
        self.manifest = validate(self.folder, format=FORMAT_SAM2)
        processor = getattr(transformers, self.manifest["processor"]).from_pretrained(str(self.folder))
        super().__init__(processor, use_box)
        self.encoder, self.decoder = ort_graphs(self.folder, providers)
        self.family = FAMILIES[self.manifest["model_type"]]
        self.provider = self.encoder.get_providers()[0]
        self.name = f"{self.family.name}-onnx:{self.provider}"
        self._low = tuple(self.manifest["low_res_size"])

    def _encode(self, pixel_values: torch.Tensor) -> dict[str, np.ndarray]:
        names = self.manifest["graphs"]["encoder"]["outputs"]
        arrays = self.encoder.run(None, {"pixel_values": pixel_values.numpy().astype(np.float32)})
        return dict(zip(names, arrays))

    def _run_decoder(self, points, labels, boxes, mask_input):
        pts = points[0].numpy().astype(np.float32)  # [B, K, 2]
        labs = labels[0].numpy().astype(np.int64)  # [B, K]
        n = len(pts)
        tail_pts = [np.zeros((n, 1, 2), np.float32)]  # the padding token
        tail_labs = [np.full((n, 1), -1, np.int64)]
        if boxes is not None:
            tail_pts.insert(0, boxes[0].numpy().astype(np.float32).reshape(n, 2, 2))
            tail_labs.insert(0, np.tile(np.array([[2, 3]], np.int64), (n, 1)))
        feeds = dict(self._embedding)
        feeds["point_coords"] = np.concatenate([pts, *tail_pts], axis=1)
        feeds["point_labels"] = np.concatenate([labs, *tail_labs], axis=1)
        has_mask = mask_input is not None
        feeds["mask_input"] = (
            np.asarray(mask_input, np.float32)[:1, None] if has_mask else np.zeros((1, 1, *self._low), np.float32)
        )
        feeds["has_mask_input"] = np.full(1, 1.0 if has_mask else 0.0, np.float32)
        low, iou, _ = self.decoder.run(None, feeds)
        return torch.from_numpy(low.astype(np.float32)), iou.astype(np.float32)
