"""RefCOCO / RefCOCO+ / RefCOCOg in the refer-API layout: ``refs(<split_by>).p`` + ``instances.json``."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
SPLITS = {"unc": ("train", "val", "testA", "testB"), "umd": ("train", "val", "test"), "google": ("train", "val")}


@dataclass
class RefSample:
    ref_id: int
    sent_id: int
    ann_id: int
    image_id: int
    image_path: Path
    sentence: str
    mask: np.ndarray  # bool [H, W], union of the annotation's parts
    kind: str = ""  # expression type where the set records one (the shapes world does)


def ann_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """COCO polygons (list of lists), uncompressed RLE or compressed RLE → bool [H, W] (parts unioned)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    m = mask_utils.decode(rle)
    if m.ndim == 3:  # several RLEs decoded at once: union
        m = m.max(axis=2)
    return m.astype(bool)


class ReferIndex:
    """What the refer-format loaders share: the image folder, the COCO index and one item per
    (ref, sentence) of ``split``, in ref id order."""

    def _index(
        self,
        folder: Path,
        refs: list[dict],
        inst: dict,
        split: str,
        name: str,
        image_root: str | Path | None,
        defaults: list[Path],
    ) -> None:
        if image_root:
            self.image_root = Path(image_root)
        elif (folder / "images").is_dir():  # self-contained sets such as the shapes world
            self.image_root = folder / "images"
        else:
            self.image_root = next((d for d in defaults if d.is_dir()), defaults[-1])
        self.images = {im["id"]: im for im in inst["images"]}
        self.anns = {a["id"]: a for a in inst["annotations"]}
        known = {r["split"] for r in refs}
        if split not in known:
            raise ValueError(f"split {split!r} not in {name}; it has {sorted(known)}")
        self.items = [
            (r, s)
            for r in sorted((r for r in refs if r["split"] == split), key=lambda r: r["ref_id"])
            for s in r["sentences"]
        ]

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, i: int) -> str:
        ref, sent = self.items[i]
        return f"{ref['ref_id']}:{sent['sent_id']}"


class RefDataset(ReferIndex):
    """One sample per sentence of the refs in ``split``; masks decoded lazily.

    ``data_root/<dataset>/refs(<split_by>).p`` and ``data_root/<dataset>/instances.json``; images
    from ``image_root`` (default ``data_root/images/mscoco/images/train2014``, as the refer API
    lays them out; ``data_root/<dataset>/images`` when that folder exists).
    """

    def __init__(
        self,
        data_root: str | Path,
        dataset: str,
        split_by: str | None = None,
        split: str = "val",
        image_root: str | Path | None = None,
    ):
        root = Path(data_root)
        self.dataset = dataset
        self.split_by = split_by or DEFAULT_SPLIT_BY.get(dataset, "unc")
        self.split = split
        folder = root / dataset
        refs_path = folder / f"refs({self.split_by}).p"
        if not refs_path.is_file():
            raise FileNotFoundError(f"no {refs_path.name} in {folder}")
        with open(refs_path, "rb") as f:
            refs = pickle.load(f)
        inst = json.loads((folder / "instances.json").read_text())
        self._index(
            folder,
            refs,
            inst,
            split,
            f"{dataset} ({self.split_by})",
            image_root,
            [root / "images" / "mscoco" / "images" / "train2014"],
        )

    def __getitem__(self, i: int) -> RefSample:
        ref, sent = self.items[i]
        img = self.images[ref["image_id"]]
        if isinstance(ref["ann_id"], list):
            raise ValueError(
                f"ref {ref['ref_id']} has several targets or none (ann_id {ref['ann_id']}): a generalized "
                "set; run python -m eval grefcoco on it"
            )
        ann = self.anns[ref["ann_id"]]
        mask = ann_to_mask(ann["segmentation"], img["height"], img["width"])
        return RefSample(
            ref_id=int(ref["ref_id"]),
            sent_id=int(sent["sent_id"]),
            ann_id=int(ref["ann_id"]),
            image_id=int(ref["image_id"]),
            image_path=self.image_root / img["file_name"],
            sentence=sent.get("sent") or sent.get("raw", ""),
            mask=mask,
            kind=sent.get("type", ""),
        )
