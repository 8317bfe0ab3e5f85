"""Referring video object segmentation sets, read from their official files.

- Ref-DAVIS17: ``davis_text_annotations/Davis17_annot{1,2}[_full_video].txt`` (lines
  ``video obj_id "expression"``; annot2 files are latin-1) + DAVIS 2017 ``JPEGImages/480p``,
  ``Annotations/480p`` (palette PNGs, object id = palette index, 255 = void) and
  ``ImageSets/2017/<split>.txt``.
- Ref-YouTube-VOS: ``meta_expressions.json`` (videos → {expressions: {exp_id: {exp, obj_id}},
  frames}) + ``JPEGImages/<video>/<frame>.jpg`` and, where given, ``Annotations`` palette PNGs.
- MeViS: ``meta_expressions.json`` (expressions {exp, obj_id: [...], anno_id: [...]}) +
  ``mask_dict.json`` (anno_id → per-frame COCO RLE or null).

One sample per (video, expression); frames and masks are read lazily, one at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

DAVIS_ANNOTATION_FILES = {
    "annot1": ("Davis17_annot1.txt", "utf-8"),
    "annot1_full_video": ("Davis17_annot1_full_video.txt", "utf-8"),
    "annot2": ("Davis17_annot2.txt", "latin-1"),
    "annot2_full_video": ("Davis17_annot2_full_video.txt", "latin-1"),
}
# Video names misspelt in the released expression files.
_DAVIS_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}


@dataclass
class VideoSample:
    dataset: str
    video: str
    exp_id: str
    expression: str
    frame_names: list[str]
    frame_paths: list[Path]
    group: str = ""  # e.g. the Ref-DAVIS annotator file
    _gt: Callable[[int], tuple[np.ndarray, np.ndarray | None]] | None = None

    @property
    def id(self) -> str:
        return f"{self.video}/{self.exp_id}"

    @property
    def has_gt(self) -> bool:
        return self._gt is not None

    def gt(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(bool mask, bool void or None) of frame ``i``."""
        if self._gt is None:
            raise ValueError(f"{self.dataset} {self.id} has no ground truth here")
        return self._gt(i)

    def frames(self) -> Iterator[Image.Image]:
        for p in self.frame_paths:
            with Image.open(p) as im:
                yield im.convert("RGB")


def _palette_gt(paths: list[Path], obj_ids: list[int]) -> Callable[[int], tuple[np.ndarray, np.ndarray | None]]:
    def read(i: int):
        arr = np.asarray(Image.open(paths[i]))
        return np.isin(arr, obj_ids), arr == 255

    return read


def read_davis_expressions(path: Path, encoding: str) -> list[tuple[str, int, str]]:
    """(video, obj_id, expression) per line of a Davis17_annot*.txt file."""
    out = []
    for line in path.read_text(encoding=encoding).splitlines():
        parts = line.strip().split(maxsplit=2)
        if len(parts) < 3:
            continue
        video, obj, exp = parts
        out.append((_DAVIS_NAME_FIXES.get(video, video), int(obj), exp.strip().strip('"')))
    return out


class RefDavis:
    """Ref-DAVIS17. ``root`` holds ``davis_text_annotations/``; DAVIS 2017 is ``root/DAVIS`` or ``root``."""

    name = "davis"

    def __init__(
        self, root: str | Path, split: str = "val", annotators: tuple[str, ...] = tuple(DAVIS_ANNOTATION_FILES)
    ):
        root = Path(root)
        davis = root / "DAVIS" if (root / "DAVIS").is_dir() else root
        videos = (davis / "ImageSets" / "2017" / f"{split}.txt").read_text().split()
        self.samples: list[VideoSample] = []
        for group in annotators:
            fname, enc = DAVIS_ANNOTATION_FILES[group]
            path = root / "davis_text_annotations" / fname
            if not path.is_file():
                continue
            for video, obj, exp in read_davis_expressions(path, enc):
                if video not in videos:
                    continue
                frames = sorted(p.stem for p in (davis / "JPEGImages" / "480p" / video).glob("*.jpg"))
                masks = [davis / "Annotations" / "480p" / video / f"{f}.png" for f in frames]
                self.samples.append(
                    VideoSample(
                        "davis",
                        video,
                        f"{group}/{obj}",
                        exp,
                        frames,
                        [davis / "JPEGImages" / "480p" / video / f"{f}.jpg" for f in frames],
                        group,
                        _palette_gt(masks, [obj]) if all(m.is_file() for m in masks) else None,
                    )
                )
        if not self.samples:
            raise ValueError(f"no Ref-DAVIS17 expressions found under {root} for split {split}")


def _meta(root: Path, split: str) -> tuple[dict, Path]:
    for cand in (root / split / "meta_expressions.json", root / "meta_expressions" / split / "meta_expressions.json"):
        if cand.is_file():
            return json.loads(cand.read_text())["videos"], cand
    raise FileNotFoundError(f"no meta_expressions.json for split {split} under {root}")


class RefYouTubeVOS:
    """Ref-YouTube-VOS: ``root/<split>/JPEGImages`` (+ ``Annotations`` where the split has them)."""

    name = "ytvos"

    def __init__(self, root: str | Path, split: str = "valid"):
        root = Path(root)
        videos, _ = _meta(root, split)
        self.samples = []
        for video in sorted(videos):
            v = videos[video]
            frames = list(v["frames"])
            paths = [root / split / "JPEGImages" / video / f"{f}.jpg" for f in frames]
            masks = [root / split / "Annotations" / video / f"{f}.png" for f in frames]
            have_gt = all(m.is_file() for m in masks)
            for exp_id in sorted(v["expressions"], key=lambda k: (len(k), k)):
                e = v["expressions"][exp_id]
                gt = _palette_gt(masks, [int(e["obj_id"])]) if have_gt and "obj_id" in e else None
                self.samples.append(VideoSample("ytvos", video, exp_id, e["exp"], frames, paths, "", gt))


class MeViS:
    """MeViS: ``root/<split>/JPEGImages``, ``meta_expressions.json`` and (valid_u, train) ``mask_dict.json``."""

    name = "mevis"

    def __init__(self, root: str | Path, split: str = "valid_u"):
        root = Path(root)
        videos, meta_path = _meta(root, split)
        mask_path = meta_path.parent / "mask_dict.json"
        masks = json.loads(mask_path.read_text()) if mask_path.is_file() else None
        self.samples = []
        for video in sorted(videos):
            v = videos[video]
            frames = list(v["frames"])
            paths = [root / split / "JPEGImages" / video / f"{f}.jpg" for f in frames]
            for exp_id in sorted(v["expressions"], key=lambda k: (len(k), k)):
                e = v["expressions"][exp_id]
                gt = None
                if masks is not None and "anno_id" in e:
                    gt = _rle_gt([masks[str(a)] for a in e["anno_id"]], paths)
                self.samples.append(VideoSample("mevis", video, exp_id, e["exp"], frames, paths, "", gt))


def _rle_gt(tracks: list[list], paths: list[Path]) -> Callable[[int], tuple[np.ndarray, None]]:
    """Union over the expression's objects of their per-frame RLE masks (null = absent)."""

    def read(i: int):
        from pycocotools import mask as mask_utils

        out = None
        for track in tracks:
            rle = track[i]
            if rle is None:
                continue
            r = dict(rle)
            if isinstance(r["counts"], str):
                r["counts"] = r["counts"].encode("ascii")
            m = mask_utils.decode(r).astype(bool)
            out = m if out is None else (out | m)
        if out is None:
            with Image.open(paths[i]) as im:
                out = np.zeros((im.height, im.width), dtype=bool)
        return out, None

    return read


VIDEO_DATASETS = {"davis": RefDavis, "ytvos": RefYouTubeVOS, "mevis": MeViS}
