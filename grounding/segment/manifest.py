"""The ONNX SAM export's manifest (written by ``python -m exporters sam``): its name, format and
the check that every file it lists is there, whole and unchanged. The segmenter checks it on load;
the exporter writes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = "dit-grounding/sam-onnx/1"


def sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate(folder: str | Path, check_hashes: bool = True) -> dict[str, Any]:
    """The manifest of an export folder, after checking every file it lists is there, whole and
    unchanged; raises ``ValueError`` naming the problem."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder} has no {MANIFEST}: not a SAM ONNX export (python -m exporters sam ...)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {manifest.get('format')!r}")
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
