"""The ONNX segmenter exports' manifest (written by ``python -m exporters sam`` / ``sam2``): its
name, the two formats (SAM's graphs; a SAM 2-family model's graphs with its processor) and the
check that every file it lists is there, whole and unchanged. The segmenters check it on load; the
exporters write it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = "dit-grounding/sam-onnx/1"  # SAM (segment-anything): exporters/sam.py
FORMAT_SAM2 = "dit-grounding/sam2-onnx/1"  # SAM 2 / SAM 3 tracker / EdgeTAM (transformers): exporters/sam2.py
FORMATS = (FORMAT, FORMAT_SAM2)


def sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read(folder: str | Path) -> dict[str, Any]:
    """The manifest of an export folder as written, its format checked, its files not (``validate``)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder} has no {MANIFEST}: not an ONNX segmenter export (python -m exporters ...)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        raise ValueError(f"{path}: unknown format {manifest.get('format') if isinstance(manifest, dict) else None!r}")
    return manifest


def validate(folder: str | Path, check_hashes: bool = True, format: str | None = None) -> dict[str, Any]:
    """The manifest of an export folder, after checking it is of ``format`` (when given) and every file
    it lists is there, whole and unchanged; raises ``ValueError`` naming the problem."""
    folder = Path(folder)
    manifest = read(folder)
    if format is not None and manifest["format"] != format:
        raise ValueError(f"{folder} is a {manifest['format']} export, not {format}")
    for name, meta in manifest["files"].items():
        f = folder / name
        if not f.is_file():
            raise ValueError(f"{folder}: {name} is missing")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise ValueError(
                f"{folder}: {name} is {size} bytes, the manifest says {meta['bytes']} (truncated or replaced)"
            )
        if check_hashes and sha256(f) != meta["sha256"]:
            raise ValueError(f"{folder}: {name} does not match its SHA-256 in the manifest")
    return dict(manifest)
