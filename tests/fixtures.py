"""Test helpers shared by the test modules (none imports another): scenes, encoded images and
videos, an SDPA recorder, and small datasets written in official formats."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode


def save_tiny_models(root: Path, archs: list[str]) -> dict[str, Path]:
    """A tiny random pipeline folder per arch under ``root`` (``synthetic.save_tiny_model``)."""
    from synthetic import save_tiny_model

    return {a: save_tiny_model(root / a, a) for a in archs}


def run_python(*args: object, check: bool = True, timeout: float = 300):
    """``python <args>`` offline from the repository root (a subprocess: what a user runs); with
    ``check`` a failure shows the end of its stderr. Returns the ``CompletedProcess``."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=root,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def run_module(package: str, *args: object, check: bool = True, timeout: float = 300):
    """``python -m <package> <args>`` (the CLIs: grounding, eval, training, exporters)."""
    return run_python("-m", package, *args, check=check, timeout=timeout)


def last_json(p) -> dict:
    """The final JSON line a command printed."""
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_bench(*args: str, timeout: float = 300) -> dict:
    """``python bench/<script> <args>`` and its final JSON line."""
    return last_json(run_python(*args, timeout=timeout))


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
        poly = [
            float(v)
            for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)
            for v in (cx + r * np.cos(a), cy + r * np.sin(a))
        ]
        sq = np.zeros((h, w), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        sq[(abs(xx - w * 0.72) < w * 0.12) & (abs(yy - h * 0.5) < h * 0.16)] = 1
        rle = mask_utils.encode(np.asfortranarray(sq))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": 100 + 2 * i,
                "image_id": i + 1,
                "category_id": 1,
                "segmentation": [poly],
                "area": float(np.pi * r * r),
                "bbox": [cx - r, cy - r, 2 * r, 2 * r],
                "iscrowd": 0,
            }
        )
        anns.append(
            {
                "id": 101 + 2 * i,
                "image_id": i + 1,
                "category_id": 2,
                "segmentation": rle,
                "area": float(sq.sum()),
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
            }
        )
        for j, (ann_id, sents) in enumerate(
            [(100 + 2 * i, ["red circle", "the round red shape on the left"]), (101 + 2 * i, ["blue square"])]
        ):
            ref_id = 10 * i + j
            refs.append(
                {
                    "ref_id": ref_id,
                    "ann_id": ann_id,
                    "image_id": i + 1,
                    "split": "val",
                    "category_id": 1,
                    "file_name": name.replace(".jpg", f"_{ann_id}.jpg"),
                    "sentences": [
                        {"sent_id": 1000 * ref_id + k, "sent": s, "raw": s, "tokens": s.split()}
                        for k, s in enumerate(sents)
                    ],
                    "sent_ids": [1000 * ref_id + k for k in range(len(sents))],
                }
            )
    refs.append(
        {
            "ref_id": 999,
            "ann_id": 100,
            "image_id": 1,
            "split": "testA",
            "category_id": 1,
            "file_name": "x.jpg",
            "sentences": [{"sent_id": 999000, "sent": "red disc", "raw": "red disc", "tokens": ["red", "disc"]}],
            "sent_ids": [999000],
        }
    )
    with open(root / dataset / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f)
    (root / dataset / "instances.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}],
            }
        )
    )
    return root


DAVIS_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 253


def moving_video(n_frames: int = 3, w: int = 64, h: int = 48):
    """Frames of a red disc moving right over a light background, and their 2-object label maps
    (1 = disc, 2 = a static blue square, 255 = a void strip at the bottom)."""
    frames, labels = [], []
    yy, xx = np.mgrid[:h, :w]
    for t in range(n_frames):
        arr = np.full((h, w, 3), 225, dtype=np.uint8)
        lab = np.zeros((h, w), dtype=np.uint8)
        cx = 14 + 8 * t
        disc = (xx - cx) ** 2 + (yy - 20) ** 2 < 64
        square = (abs(xx - 50) < 6) & (abs(yy - 30) < 6)
        arr[disc] = (220, 30, 30)
        arr[square] = (30, 40, 220)
        lab[disc], lab[square] = 1, 2
        lab[-2:, :] = 255
        frames.append(Image.fromarray(arr))
        labels.append(lab)
    return frames, labels


def _palette_png(lab: np.ndarray, path: Path) -> None:
    im = Image.fromarray(lab, mode="P")
    im.putpalette(DAVIS_PALETTE)
    im.save(path)


def write_davis_fixture(root: Path, n_frames: int = 3) -> Path:
    """Ref-DAVIS17 layout: davis_text_annotations (annot2 in latin-1) + DAVIS 2017 480p folders."""
    davis = root / "DAVIS"
    video = "red-disc"
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text(f"{video}\n")
    (davis / "ImageSets" / "2017" / "train.txt").write_text("other\n")
    jpg, ann = davis / "JPEGImages" / "480p" / video, davis / "Annotations" / "480p" / video
    jpg.mkdir(parents=True)
    ann.mkdir(parents=True)
    frames, labels = moving_video(n_frames)
    for t, (im, lab) in enumerate(zip(frames, labels)):
        im.save(jpg / f"{t:05d}.jpg", quality=95)
        _palette_png(lab, ann / f"{t:05d}.png")
    text = root / "davis_text_annotations"
    text.mkdir()
    (text / "Davis17_annot1.txt").write_text(f'{video} 1 "a red disc"\n{video} 2 "the blue square"\nother 1 "x"\n')
    (text / "Davis17_annot1_full_video.txt").write_text(f'{video} 1 "red disc moving right"\n')
    (text / "Davis17_annot2.txt").write_bytes(f'{video} 1 "the red disc, caf\u00e9 colour"\n'.encode("latin-1"))
    (text / "Davis17_annot2_full_video.txt").write_bytes(f'{video} 2 "blue square na\u00efve"\n'.encode("latin-1"))
    return root


def write_ytvos_fixture(root: Path, split: str = "valid", with_gt: bool = False) -> Path:
    video = "vid0001"
    jpg = root / split / "JPEGImages" / video
    jpg.mkdir(parents=True)
    frames, labels = moving_video(3)
    names = [f"{5 * t:05d}" for t in range(3)]
    for im, lab, n in zip(frames, labels, names):
        im.save(jpg / f"{n}.jpg", quality=95)
        if with_gt:
            (root / split / "Annotations" / video).mkdir(parents=True, exist_ok=True)
            _palette_png(
                np.where(lab == 255, 0, lab).astype(np.uint8), root / split / "Annotations" / video / f"{n}.png"
            )
    meta = {
        "videos": {
            video: {
                "expressions": {
                    "0": {"exp": "a red disc", "obj_id": "1"},
                    "1": {"exp": "the blue square", "obj_id": "2"},
                },
                "frames": names,
            }
        }
    }
    (root / "meta_expressions" / split).mkdir(parents=True)
    (root / "meta_expressions" / split / "meta_expressions.json").write_text(json.dumps(meta))
    return root


def write_mevis_fixture(root: Path, split: str = "valid_u") -> Path:
    from pycocotools import mask as mask_utils

    video = "m0001"
    jpg = root / split / "JPEGImages" / video
    jpg.mkdir(parents=True)
    frames, labels = moving_video(3)
    names = [f"{t:05d}" for t in range(3)]
    tracks = {"0": [], "1": []}
    for im, lab, n in zip(frames, labels, names):
        im.save(jpg / f"{n}.jpg", quality=95)
        for anno, obj in (("0", 1), ("1", 2)):
            rle = mask_utils.encode(np.asfortranarray((lab == obj).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            tracks[anno].append(rle)
    tracks["1"][0] = None  # the square is missing in the first frame
    meta = {
        "videos": {
            video: {
                "expressions": {
                    "0": {"exp": "the red disc", "obj_id": [1], "anno_id": [0]},
                    "1": {"exp": "both shapes", "obj_id": [1, 2], "anno_id": [0, 1]},
                },
                "frames": names,
            }
        }
    }
    (root / split / "meta_expressions.json").write_text(json.dumps(meta))
    (root / split / "mask_dict.json").write_text(json.dumps(tracks))
    return root


def write_grefcoco_fixture(root: Path, n_images: int = 2) -> Path:
    """gRefCOCO's released layout: ``root/grefcoco/grefs(unc).json`` (refs with ``ann_id`` a list,
    ``[-1]`` and ``no_target: true`` for no-target expressions) + ``instances.json``, images under
    ``root/images/train2014``. Per image: a red disc (polygon) and a blue square (RLE); refs name
    the disc, both shapes (multi-target) and a green star (no target)."""
    write_refer_fixture(root / "_refer", n_images=n_images)
    inst = json.loads((root / "_refer" / "refcoco" / "instances.json").read_text())
    img_dir = root / "images" / "train2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    for im in inst["images"]:
        (img_dir / im["file_name"]).write_bytes(
            (root / "_refer" / "images" / "mscoco" / "images" / "train2014" / im["file_name"]).read_bytes()
        )
    refs = []
    for i, im in enumerate(inst["images"]):
        disc, square = 100 + 2 * i, 101 + 2 * i
        for j, (ann_ids, sents) in enumerate(
            [([disc], ["red circle"]), ([disc, square], ["both shapes", "all objects"]), ([-1], ["the green star"])]
        ):
            ref_id = 10 * i + j
            refs.append(
                {
                    "ref_id": ref_id,
                    "image_id": im["id"],
                    "file_name": im["file_name"],
                    "split": "val",
                    "category_id": 1,
                    "no_target": ann_ids == [-1],
                    "ann_id": ann_ids,
                    "sentences": [
                        {"sent_id": 1000 * ref_id + k, "sent": s, "raw": s, "tokens": s.split(), "ref_id": ref_id}
                        for k, s in enumerate(sents)
                    ],
                    "sent_ids": [1000 * ref_id + k for k in range(len(sents))],
                }
            )
    (root / "grefcoco").mkdir(parents=True, exist_ok=True)
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(refs))
    (root / "grefcoco" / "instances.json").write_text(json.dumps(inst))
    import shutil

    shutil.rmtree(root / "_refer")
    return root


def scene(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """A light background with a red disc and a blue square."""
    rng = np.random.RandomState(seed)
    arr = np.full((h, w, 3), 225, dtype=np.float32) + rng.normal(0, 4, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    arr[(xx - w * 0.3) ** 2 + (yy - h * 0.5) ** 2 < (min(w, h) * 0.18) ** 2] = (220, 30, 30)
    arr[(abs(xx - w * 0.72) < w * 0.12) & (abs(yy - h * 0.5) < h * 0.16)] = (30, 40, 220)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def video_bytes(tmp_path, n: int, name: str = "v.mp4") -> bytes:
    from grounding.pipeline.video_output import OverlayWriter

    frames, _ = moving_video(n, 64, 48)
    w = OverlayWriter(tmp_path / name, 8)
    for f in frames:
        w.write(f)
    w.close()
    return (tmp_path / name).read_bytes()


class RecordSDPA(TorchFunctionMode):
    """q, k and mask of every stock SDPA call, tagged with the attention module running it."""

    def __init__(self):
        super().__init__()
        self.calls, self.block = [], None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.block is not None:
            q = kwargs.get("query", args[0] if args else None)
            k = kwargs.get("key", args[1] if len(args) > 1 else None)
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.calls.append(
                (self.block, q.detach().clone(), k.detach().clone(), None if mask is None else mask.detach().clone())
            )
        return func(*args, **kwargs)
