"""Small datasets written in official formats, for tests."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import scene


def write_refer_fixture(root: Path, dataset: str = "refcoco", split_by: str = "unc", n_images: int = 3) -> Path:
    """``root/<dataset>/refs(<split_by>).p`` + ``instances.json`` and images under the refer layout.

    Each image holds a red disc (polygon annotation) and a blue square (RLE annotation); refs
    name each in ``val`` and one disc in ``testA``.
    """
    from pycocotools import mask as mask_utils

    img_dir = root / "images" / "mscoco" / "images" / "train2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    (root / dataset).mkdir(parents=True, exist_ok=True)
    images, anns, refs = [], [], []
    w, h = 64, 48
    for i in range(n_images):
        name = f"COCO_train2014_{i:012d}.jpg"
        scene(w, h, seed=i).save(img_dir / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        # disc as a polygon (a 16-gon), square as compressed RLE
        cx, cy, r = w * 0.3, h * 0.5, min(w, h) * 0.18
        poly = [float(v) for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)
                for v in (cx + r * np.cos(a), cy + r * np.sin(a))]
        sq = np.zeros((h, w), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        sq[(abs(xx - w * 0.72) < w * 0.12) & (abs(yy - h * 0.5) < h * 0.16)] = 1
        rle = mask_utils.encode(np.asfortranarray(sq))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append({"id": 100 + 2 * i, "image_id": i + 1, "category_id": 1, "segmentation": [poly],
                     "area": float(np.pi * r * r), "bbox": [cx - r, cy - r, 2 * r, 2 * r], "iscrowd": 0})
        anns.append({"id": 101 + 2 * i, "image_id": i + 1, "category_id": 2, "segmentation": rle,
                     "area": float(sq.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0})
        for j, (ann_id, sents) in enumerate([(100 + 2 * i, ["red circle", "the round red shape on the left"]),
                                             (101 + 2 * i, ["blue square"])]):
            ref_id = 10 * i + j
            refs.append({
                "ref_id": ref_id, "ann_id": ann_id, "image_id": i + 1, "split": "val", "category_id": 1,
                "file_name": name.replace(".jpg", f"_{ann_id}.jpg"),
                "sentences": [{"sent_id": 1000 * ref_id + k, "sent": s, "raw": s, "tokens": s.split()}
                              for k, s in enumerate(sents)],
                "sent_ids": [1000 * ref_id + k for k in range(len(sents))],
            })
    refs.append({"ref_id": 999, "ann_id": 100, "image_id": 1, "split": "testA", "category_id": 1,
                 "file_name": "x.jpg", "sentences": [{"sent_id": 999000, "sent": "red disc", "raw": "red disc",
                                                      "tokens": ["red", "disc"]}], "sent_ids": [999000]})
    with open(root / dataset / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f)
    (root / dataset / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]}))
    return root
