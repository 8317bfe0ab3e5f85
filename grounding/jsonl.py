"""Append-only JSON-lines files that survive being killed mid-write (runs, video jobs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_jsonl(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a JSON-lines file. A last line without its newline (a killed write) is dropped,
    and with ``repair`` cut from the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    if good_end < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return [json.loads(line) for line in data[:good_end].decode("utf-8").splitlines() if line.strip()]


class JsonlWriter:
    """Appends one record per line, flushed and fsynced, so a finished record is never lost."""

    def __init__(self, path: Path):
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
