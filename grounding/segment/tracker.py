"""A referent's mask carried from frame to frame by a SAM 2-family video model's memory.

``Tracker`` holds the model and its video processor (loaded once per segmenter, its image encoder
shared with the image model's); ``Tracker.start()`` opens a ``TrackSession`` for one video, so two
videos never share a memory bank. A session is streamed: frames are given one at a time
(``step``), never all at once, and after every frame the session is pruned to what the model can
still read — the current frame's pixels, the last ``max(num_maskmem, max_object_pointers_in_encoder)``
tracked frames' memories and the ``anchors`` most recent conditioning frames — so its memory is
bounded however long the video (transformers' streaming session keeps every frame otherwise).

An *anchor* is a mask given on a frame (the DiT map's segmentation at a keyframe). SAM 2 takes it
as the frame's output (its "mask as output" path) and as a conditioning memory that every later
frame attends to. ``step(..., anchor=mask)`` anchors a new frame; ``reanchor`` replaces a frame
already tracked (its tracked output dropped, the mask stored as conditioning in its place; the
frame's image features are cached, so this costs a decoder and a memory-encoder pass only).

The object is one id (1): one referent per expression. Shapes: frames ``[H, W, 3]`` uint8, masks
``[H, W]`` bool at the frame's size; the decoder's low-res logits are ``[h, w]`` (4 × the
embedding side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .transformers_sam import family_of, placed

OBJECT = 1


@dataclass
class Track:
    """One frame's tracked mask: ``mask`` ``[H, W]`` bool (empty when the model says the object is
    not in the frame), ``probability`` the model's object score as a probability."""

    mask: np.ndarray
    probability: float

    @property
    def present(self) -> bool:
        return self.probability > 0.5 and bool(self.mask.any())


class Tracker:
    """A SAM 2-family video model and its video processor, shared by the sessions it starts."""

    def __init__(
        self, model: Any, processor: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ):
        self.device = torch.device(device)
        self.model = placed(model, self.device, dtype)
        self.dtype = next(self.model.parameters()).dtype
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        share_encoder: Any = None,
    ) -> "Tracker":
        """The video model of the family the checkpoint's config names. ``share_encoder``: an image
        model of the same checkpoint whose vision encoder the tracker reuses (one copy in memory)."""
        import transformers

        family = family_of(name_or_path)
        model = getattr(transformers, family.video_model).from_pretrained(name_or_path)
        encoder = getattr(share_encoder, "vision_encoder", None)
        if encoder is not None and type(encoder) is type(model.vision_encoder):
            model.vision_encoder = encoder
        return cls(model, getattr(transformers, family.video_processor).from_pretrained(name_or_path), device, dtype)

    @property
    def memory_frames(self) -> int:
        """How many tracked frames the model reads back (memories and object pointers)."""
        c = self.model.config
        return max(int(c.num_maskmem), int(c.max_object_pointers_in_encoder))

    def start(self, anchors: int = 4) -> "TrackSession":
        """A fresh session (empty memory) for one video; ``anchors``: conditioning frames kept."""
        return TrackSession(self, anchors)


class TrackSession:
    """One video's streaming inference session (see the module docstring)."""

    def __init__(self, tracker: Tracker, anchors: int = 4):
        if anchors < 1:
            raise ValueError(f"anchors must be ≥ 1, got {anchors}")
        self.tracker = tracker
        self.anchors = anchors
        self.session = tracker.processor.init_video_session(
            inference_device=tracker.device, video_storage_device="cpu", dtype=tracker.dtype
        )
        self.size: tuple[int, int] | None = None
        self.anchored = False

    def step(self, index: int, frame: np.ndarray, anchor: np.ndarray | None = None) -> Track:
        """Frame ``index`` (increasing from call to call) through the model: tracked from the
        memory, or, with ``anchor`` (``[H, W]`` bool), that mask made the frame's conditioning output."""
        frame = np.array(frame)  # a writable copy for the processor
        self.size = (int(frame.shape[0]), int(frame.shape[1]))
        if anchor is None and not self.anchored:
            raise ValueError("the session has no anchor yet: the first step needs one")
        pixels = self.tracker.processor(images=frame, return_tensors="pt")["pixel_values"][0]
        if anchor is not None:
            self._add_anchor(index, anchor)
        return self._run(index, pixels)

    def reanchor(self, index: int, mask: np.ndarray) -> Track:
        """Replace frame ``index`` (the last one stepped) by ``mask`` as a conditioning frame."""
        s = self.session
        for obj, outputs in s.output_dict_per_obj.items():
            outputs["non_cond_frame_outputs"].pop(index, None)
            outputs["cond_frame_outputs"].pop(index, None)
            s.frames_tracked_per_obj[obj].pop(index, None)
        self._add_anchor(index, mask)
        return self._run(index, None)

    def _add_anchor(self, index: int, mask: np.ndarray) -> None:
        self.tracker.processor.add_inputs_to_inference_session(
            inference_session=self.session, frame_idx=index, obj_ids=OBJECT, input_masks=np.asarray(mask, dtype=bool)
        )
        self.anchored = True

    def _run(self, index: int, pixels: torch.Tensor | None) -> Track:
        with torch.no_grad():
            out = self.tracker.model(inference_session=self.session, frame_idx=index, frame=pixels)
        assert self.size is not None
        logits = self.tracker.processor.post_process_masks(
            [out.pred_masks.float().cpu()], original_sizes=[list(self.size)], binarize=False
        )[0]  # [objects, 1, H, W]
        probability = float(torch.sigmoid(out.object_score_logits.float().reshape(-1)[0]))
        self._prune(index)
        return Track((logits[0, 0] > 0).numpy(), probability)

    def _prune(self, index: int) -> None:
        """Drop what the model can no longer read: frames before ``index``, tracked outputs older
        than ``memory_frames``, conditioning outputs beyond the ``anchors`` most recent."""
        s = self.session
        keep_from = index - self.tracker.memory_frames
        if s.processed_frames:
            for t in [t for t in s.processed_frames if t < index]:
                del s.processed_frames[t]
        for obj in list(s.output_dict_per_obj):
            outputs = s.output_dict_per_obj[obj]
            for t in [t for t in outputs["non_cond_frame_outputs"] if t < keep_from]:
                del outputs["non_cond_frame_outputs"][t]
            cond = outputs["cond_frame_outputs"]
            for t in sorted(cond)[: -self.anchors]:
                del cond[t]
            tracked = s.frames_tracked_per_obj[obj]
            for t in [t for t in tracked if t < keep_from]:
                del tracked[t]
            for inputs in (s.point_inputs_per_obj[obj], s.mask_inputs_per_obj[obj]):
                for t in [t for t in inputs if t < index]:
                    del inputs[t]

    def held(self) -> dict[str, int]:
        """What the session holds now (frames' pixels, tracked and conditioning outputs): bounded."""
        s = self.session
        outs = s.output_dict_per_obj.get(0, {"non_cond_frame_outputs": {}, "cond_frame_outputs": {}})
        return {
            "frames": len(s.processed_frames or {}),
            "tracked": len(outs["non_cond_frame_outputs"]),
            "anchors": len(outs["cond_frame_outputs"]),
        }
