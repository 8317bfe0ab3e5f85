"""SAM 3's concept segmentation as a proposer: a short noun phrase → every instance with a score.

``Sam3Model`` (transformers) detects and segments all instances of a concept given as text —
"red cup" — with a presence head deciding whether the concept is in the image at all. It reads a
noun phrase, not a sentence: places, relations and counts are the map's job (``proposals``).
The released checkpoint (``facebook/sam3``, ``model_type`` ``sam3_video``) holds SAM 3's detector
and its tracker; ``Sam3Model`` loads the detector from it, ``Sam3TrackerModel`` the point/box
segmenter that map prompting uses (``transformers_sam``). Both have the same ViT backbone: the
proposer takes the tracker's module (one copy in memory). The image's vision features are cached,
so several expressions on one image run the backbone once.

Scores: ``post_process_instance_segmentation`` gives each query's detection probability times the
presence probability; instances under ``ProposalsConfig.min_score`` are dropped, masks are the
mask logits' sigmoid ≥ 0.5 at the image's size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ProposalsConfig
from .proposals import Proposal
from .transformers_sam import placed


class ConceptProposer:
    """``Sam3Model`` + ``Sam3Processor``: ``(image, phrase) → proposals`` (``proposals.Proposer``)."""

    name = "sam3-concept"

    def __init__(
        self, model: Any, processor: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ):
        self.device = torch.device(device)
        self.model = placed(model, self.device, dtype)
        self.dtype = next(self.model.parameters()).dtype
        self.processor = processor
        self._key: str | None = None
        self._vision: Any = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        share_backbone: Any = None,
    ) -> "ConceptProposer":
        """The detector of a SAM 3 checkpoint (hub id or folder). ``share_backbone``: a model of the
        same checkpoint (the tracker) whose ViT backbone this proposer reuses instead of a copy."""
        import transformers

        model = transformers.Sam3Model.from_pretrained(str(name_or_path))
        mine = model.vision_encoder.backbone
        theirs = getattr(getattr(share_backbone, "vision_encoder", None), "backbone", None)
        if theirs is not None and type(theirs) is type(mine) and _same_weights(mine, theirs):
            model.vision_encoder.backbone = theirs
        return cls(model, transformers.Sam3Processor.from_pretrained(str(name_or_path)), device, dtype)

    def __call__(self, image: np.ndarray, phrase: str | None, cfg: ProposalsConfig) -> list[Proposal]:
        if not phrase:
            return []
        rgb = np.array(np.asarray(image)[..., :3])  # a writable copy (torch warns on read-only arrays)
        h, w = rgb.shape[:2]
        key = hashlib.sha1(rgb.tobytes() + repr(rgb.shape).encode()).hexdigest()
        with torch.no_grad():
            if key != self._key:
                pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
                self._vision = self.model.get_vision_features(pixel_values=pixels.to(self.device, self.dtype))
                self._key = key
            text = self.processor(text=phrase, return_tensors="pt")
            out = self.model(
                vision_embeds=self._vision,
                input_ids=text["input_ids"].to(self.device),
                attention_mask=text["attention_mask"].to(self.device),
            )
        found = self.processor.post_process_instance_segmentation(
            out, threshold=cfg.min_score, mask_threshold=0.5, target_sizes=[(h, w)]
        )[0]
        masks = found["masks"].bool().cpu().numpy()
        scores = found["scores"].float().cpu().numpy()
        return [Proposal(m, float(s)) for m, s in zip(masks, scores) if m.any()]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two modules of one class hold equal parameters (same checkpoint, same backbone)."""
    pa, pb = a.state_dict(), b.state_dict()
    return pa.keys() == pb.keys() and all(
        pa[k].shape == pb[k].shape and torch.equal(pa[k].to(pb[k].device, pb[k].dtype), pb[k]) for k in pa
    )
