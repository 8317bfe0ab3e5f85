"""SAM 2 / 2.1 and SAM 3's tracker through transformers, behind the same contract as SAM.

A folder or hub id of a transformers ``Sam2Model`` (SAM 2 / 2.1), ``Sam3TrackerModel`` (SAM 3's
promptable tracker; the full SAM 3 checkpoint, ``model_type`` ``sam3_video``, is loaded as its
tracker, as transformers' docs do, and its detector proposes instances: ``concept_proposer``) or
``EdgeTamModel`` (EdgeTAM; it needs ``timm``) is loaded by the family its ``config.json`` names
(``FAMILIES``), with the family's processor, which does the resizing and normalisation. A folder
of SAM 3's detector alone (``model_type`` ``sam3``) has no point/box segmenter: refused by name.
Released checkpoints are saved from the *video* model (``sam2_video``, …); the
image class loads them and skips the memory weights, and ``tracker()`` loads the video model from
the same checkpoint (``tracker.Tracker``) for propagation. The image embedding is cached per image
as for SAM, so several expressions on one image pay for the encoder once. Prompts are in image
pixels, as the map gives them: points with labels (1 foreground, 0 background) and the map
region's box.

Multimask and scores, per family (all three share SAM 2's mask decoder): with
``multimask_output=True`` the decoder returns 3 candidate masks per prompt set and a predicted IoU
for each (``iou_scores``); the candidate that agrees best with the map region is chosen
(``segmenters.choose``, the predicted IoU breaking ties) — exactly as for SAM. SAM 2's "dynamic
multimask via stability" applies only when one mask is asked for, so it never changes our
candidates. Low-res logits (``Segmentation.low_res``) are the decoder's own mask size (4 × the
embedding side: 256 for the released models); passed back as ``input_masks`` they are the next
frame's mask prompt, as SAM's are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .segmenters import SamSegmenterBase


@dataclass(frozen=True)
class Family:
    """One SAM 2-family model in transformers: its image and video classes and its name in results."""

    name: str  # in results and /info
    model: str  # image model class (``predict``)
    processor: str
    video_model: str  # video model class (``Tracker``: masks carried by its memory)
    video_processor: str


SAM2 = Family("sam2", "Sam2Model", "Sam2Processor", "Sam2VideoModel", "Sam2VideoProcessor")
SAM3_TRACKER = Family(
    "sam3-tracker", "Sam3TrackerModel", "Sam3TrackerProcessor", "Sam3TrackerVideoModel", "Sam3TrackerVideoProcessor"
)
EDGETAM = Family("edgetam", "EdgeTamModel", "Sam2Processor", "EdgeTamVideoModel", "Sam2VideoProcessor")
# config.json ``model_type`` → family. Released checkpoints are saved from the video model
# (``sam2_video``, ``sam3_video``, ``edgetam_video``: the image classes load them and skip the memory
# weights); folders saved from an image model name the image type.
FAMILIES = {
    "sam2": SAM2,
    "sam2_video": SAM2,
    "sam3_tracker": SAM3_TRACKER,
    "sam3_tracker_video": SAM3_TRACKER,
    "sam3": SAM3_TRACKER,  # SAM 3's detector alone: refused by ``family_of`` (no point/box segmenter)
    "sam3_video": SAM3_TRACKER,
    "edgetam": EDGETAM,
    "edgetam_video": EDGETAM,
}


def transformers_sam_type(spec: str | Path) -> str | None:
    """The ``model_type`` of a local transformers SAM-family folder, or None when ``spec`` is not one."""
    config = Path(spec) / "config.json"
    if not config.is_file():
        return None
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (ValueError, OSError):
        return None
    return model_type if model_type in FAMILIES else None


def family_of(name_or_path: str | Path) -> Family:
    """The family a hub id's or folder's ``config.json`` names; ``ValueError`` for any other model."""
    import transformers

    model_type = transformers.AutoConfig.from_pretrained(str(name_or_path)).model_type
    if model_type == "sam3":
        raise ValueError(
            f"{name_or_path} holds SAM 3's detector alone (model_type 'sam3'): it proposes instances from a "
            "phrase but has no point/box segmenter for map prompts; use the full SAM 3 checkpoint "
            "(facebook/sam3, model_type 'sam3_video'), which holds both"
        )
    if model_type not in FAMILIES:
        raise ValueError(
            f"{name_or_path} is a {model_type!r} model, not a SAM 2-family segmenter ({', '.join(FAMILIES)})"
        )
    return FAMILIES[model_type]


def placed(model: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """``model`` on ``device`` (in ``dtype`` when given, else its own), in eval mode."""
    return (model.to(device, dtype) if dtype is not None else model.to(device)).eval()


class ProcessorSegmenter(SamSegmenterBase):
    """A SAM 2-family segmenter around its processor: the processor resizes and normalises images,
    scales prompts to the model's frame and upscales masks; subclasses run the model — in torch
    (``TransformersSamSegmenter``) or onnxruntime (``onnx_sam2.OnnxSam2Segmenter``) — on what it gives."""

    def __init__(self, processor: Any, use_box: bool = True):
        super().__init__(use_box)
        self.processor = processor
        self._embedding: Any = None
        self._original_size: tuple[int, int] = (0, 0)

    def _embed(self, image: np.ndarray) -> None:
        inputs = self.processor(images=np.array(image), return_tensors="pt")  # a writable copy
        self._original_size = (int(image.shape[0]), int(image.shape[1]))
        self._embedding = self._encode(inputs["pixel_values"])

    def _encode(self, pixel_values: torch.Tensor) -> Any:
        """The image embedding the decoder reads, from ``pixel_values`` ``[1, 3, S, S]``."""
        raise NotImplementedError

    def _run_decoder(
        self,
        points: torch.Tensor,
        labels: torch.Tensor,
        boxes: torch.Tensor | None,
        mask_input: np.ndarray | None,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Prompts in the model's frame (``points`` ``[1, B, K, 2]``, ``labels`` ``[1, B, K]``,
        ``boxes`` ``[1, B, 4]``; ``mask_input`` ``[B, h, w]`` low-res logits) on the embedded image →
        low-res logits ``[B, 3, h, w]`` (float32, CPU) and predicted IoU ``[B, 3]``."""
        raise NotImplementedError

    def _decode(
        self,
        points: np.ndarray,
        labels: np.ndarray,
        boxes: np.ndarray | None,
        mask_input: np.ndarray | None = None,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``B`` prompt sets on the embedded image (``points`` ``[B, K, 2]``, ``labels`` ``[B, K]``,
        ``boxes`` ``[B, 4]``, ``mask_input`` ``[B, h, w]`` low-res logits) → masks ``[B, 3, H, W]``
        (bool, or logits), predicted IoU ``[B, 3]``, low-res logits ``[B, 3, h, w]``."""
        assert self._embedding is not None, "set_image first"
        h, w = self._original_size
        prompts = self.processor(
            input_points=[[[[float(x), float(y)] for x, y in pts] for pts in points]],
            input_labels=[[[int(v) for v in labs] for labs in labels]],
            input_boxes=None if boxes is None else [[[float(v) for v in box] for box in boxes]],
            original_sizes=[[h, w]],
            return_tensors="pt",
        )
        low, iou = self._run_decoder(
            prompts["input_points"], prompts["input_labels"], prompts.get("input_boxes"), mask_input
        )
        masks = self.processor.post_process_masks(low[None], torch.tensor([[h, w]]), binarize=not return_logits)[0]
        return masks.numpy(), np.asarray(iou, dtype=np.float32), low.numpy()

    def predict(
        self,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None,
        return_logits: bool = False,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt set: masks ``[3, H, W]``, IoU ``[3]``, low-res logits ``[3, h, w]``;
        ``mask_input`` ``[1, h, w]`` is a low-res mask prompt (the previous frame's)."""
        masks, iou, low = self._decode(
            np.asarray(points, dtype=np.float32)[None],
            np.asarray(labels)[None],
            None if box is None else np.asarray(box, dtype=np.float32)[None],
            mask_input,
            return_logits,
        )
        return masks[0], iou[0], low[0]

    def predict_many(
        self, points: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All ``B`` prompt sets in one decoder call (the model's "objects" axis)."""
        return self._decode(points, labels, boxes)


def _from_video_weights(model: Any, family: Family, name_or_path: str | Path) -> Any:
    """``model`` (an image class) with its weights taken from the family's video model of the same
    checkpoint. transformers 5.24 loads SAM 3's full checkpoint (``sam3_video``) into
    ``Sam3TrackerModel`` without its prompt encoder and mask decoder (left random, with a warning
    nobody reads), while ``Sam3TrackerVideoModel`` maps every key; the image model's modules are a
    subset of the video model's, under the same names. ``ValueError`` when weights are still missing."""
    import transformers

    video = getattr(transformers, family.video_model).from_pretrained(str(name_or_path))
    missing = model.load_state_dict(video.state_dict(), strict=False).missing_keys
    if missing:
        raise ValueError(
            f"{name_or_path}: {len(missing)} weights of {family.model} are not in the checkpoint ({missing[0]}, ...)"
        )
    return model


class TransformersSamSegmenter(ProcessorSegmenter):
    """A transformers SAM 2-family model and its processor: ``predict`` / ``predict_many`` as SAM's."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        use_box: bool = True,
        source: str | None = None,
    ):
        super().__init__(processor, use_box)
        self.device = torch.device(device)
        self.model = placed(model, self.device, dtype)
        self.dtype = next(self.model.parameters()).dtype
        self.family = FAMILIES.get(getattr(model.config, "model_type", ""), SAM2)
        self.name = self.family.name
        self.source = source  # hub id or folder (``from_pretrained``): where ``tracker`` loads from
        self._tracker: Any = None
        self._concept: Any = None

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, **kw: Any
    ) -> "TransformersSamSegmenter":
        """Model and processor from a hub id or local folder (the classes read from its config)."""
        import transformers

        family = family_of(name_or_path)
        model, info = getattr(transformers, family.model).from_pretrained(str(name_or_path), output_loading_info=True)
        if info["missing_keys"]:
            model = _from_video_weights(model, family, name_or_path)
        processor = getattr(transformers, family.processor).from_pretrained(str(name_or_path))
        return cls(model, processor, device, dtype, source=str(name_or_path), **kw)

    def tracker(self) -> Any:
        """The family's video model from the same checkpoint (loaded once, its image encoder shared
        with this segmenter's): a ``tracker.Tracker`` that carries masks from frame to frame."""
        if self._tracker is None:
            if self.source is None:
                raise ValueError(
                    f"this {self.name} segmenter was built in memory; load it from a folder or hub id to track"
                )
            from .tracker import Tracker

            self._tracker = Tracker.from_pretrained(self.source, self.device, self.dtype, share_encoder=self.model)
        return self._tracker

    def concept_proposer(self) -> Any:
        """SAM 3's detector from the same checkpoint (loaded once, the backbone shared with this
        segmenter's): a ``sam3_concept.ConceptProposer``. ``ValueError`` for other families."""
        if self._concept is None:
            if self.family is not SAM3_TRACKER:
                raise ValueError(f"concept proposals need SAM 3; this segmenter is {self.name}")
            if self.source is None:
                raise ValueError("this SAM 3 segmenter was built in memory; load it from a folder or hub id")
            from .sam3_concept import ConceptProposer

            self._concept = ConceptProposer.from_pretrained(
                self.source, self.device, self.dtype, share_backbone=self.model
            )
        return self._concept

    def _encode(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.model.get_image_embeddings(pixel_values.to(self.device, self.dtype))

    def _run_decoder(self, points, labels, boxes, mask_input):
        kwargs: dict[str, Any] = {
            "image_embeddings": self._embedding,
            "input_points": points.to(self.device, self.dtype),
            "input_labels": labels.to(self.device),
            "multimask_output": True,
        }
        if boxes is not None:
            kwargs["input_boxes"] = boxes.to(self.device, self.dtype)
        if mask_input is not None:
            kwargs["input_masks"] = torch.as_tensor(mask_input, dtype=self.dtype, device=self.device)[:, None]
        with torch.no_grad():
            out = self.model(**kwargs)
        return out.pred_masks[0].float().cpu(), out.iou_scores[0].float().cpu().numpy()
