"""gRefCOCO (GREx / ReLA; generalized referring: multi-, single- and no-target expressions) in its
released layout: ``<root>/grefcoco/grefs(unc).json`` (or the same refs as a refer-API pickle,
``refs(unc).p``) — a list of refs, each with ``ref_id``, ``image_id``, ``file_name``, ``split``,
``no_target``, ``ann_id`` (a list; ``[-1]`` when there is no target) and ``sentences`` — and
``<root>/grefcoco/instances.json`` (COCO). Images from ``image_root``, else
``<root>/images/train2014``, else ``<root>/images/mscoco/images/train2014``.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .refcoco import ReferIndex, ann_to_mask

SPLITS = ("train", "val", "testA", "testB")


@dataclass
class GRefSample:
    ref_id: int
    sent_id: int
    ann_ids: list[int]  # [] when no target
    image_id: int
    image_path: Path
    sentence: str
    mask: np.ndarray  # bool [H, W]: union of every target's mask (all False when no target)
    no_target: bool
    kind: str = ""  # the sentence's "type" where the set records one (the shapes sets do)

    @property
    def targets(self) -> int:
        return len(self.ann_ids)


class GRefDataset(ReferIndex):
    """One sample per sentence of the refs in ``split``; masks decoded lazily."""

    def __init__(
        self,
        data_root: str | Path,
        split: str = "val",
        image_root: str | Path | None = None,
        dataset: str = "grefcoco",
        split_by: str = "unc",
    ):
        root = Path(data_root)
        folder = root / dataset
        path, pickled = folder / f"grefs({split_by}).json", folder / f"refs({split_by}).p"
        if path.is_file():
            refs = json.loads(path.read_text())
        elif pickled.is_file():  # the same refs in the refer API's pickle (make-shapes --layout refer)
            with open(pickled, "rb") as f:
                refs = pickle.load(f)
        else:
            raise FileNotFoundError(f"no {path.name} (or {pickled.name}) in {folder}")
        inst = json.loads((folder / "instances.json").read_text())
        self._index(
            folder,
            refs,
            inst,
            split,
            dataset,
            image_root,
            [root / "images" / "train2014", root / "images" / "mscoco" / "images" / "train2014"],
        )

    def __getitem__(self, i: int) -> GRefSample:
        ref, sent = self.items[i]
        img = self.images[ref["image_id"]]
        raw = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        ann_ids = [int(a) for a in raw if int(a) >= 0]
        no_target = bool(ref.get("no_target", not ann_ids))
        if no_target and ann_ids:
            raise ValueError(f"ref {ref['ref_id']}: no_target but ann_id {raw}")
        mask = np.zeros((img["height"], img["width"]), dtype=bool)
        for a in ann_ids:
            mask |= ann_to_mask(self.anns[a]["segmentation"], img["height"], img["width"])
        name = ref.get("file_name") or img["file_name"]
        return GRefSample(
            ref_id=int(ref["ref_id"]),
            sent_id=int(sent["sent_id"]),
            ann_ids=ann_ids,
            image_id=int(ref["image_id"]),
            image_path=self.image_root / Path(name).name,
            sentence=sent.get("sent") or sent.get("raw", ""),
            mask=mask,
            no_target=no_target,
            kind=str(sent.get("type", "")),
        )
