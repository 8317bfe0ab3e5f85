"""The prompt-conditioning cache of ``DiTBackend.conditioning``: an LRU of per-sample rows of
``encode_prompts``' output, split off a batch (``cond_row``) and joined into a new one
(``cond_join``, per-token rows of shorter prompts zero-padded), so a prompt seen recently is never
encoded again and a batch can mix cached and new prompts. Tensors are moved to the model's device;
numpy arrays (host-side facts such as which positions are real) stay on the host, so reading them
never waits on the device.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

# One sample's part of one ``encode_prompts`` entry: how to join it back ("none", "shared", "list",
# "tensor") and the value; a row is such a part per entry name.
RowPart = tuple[str, Any]
Row = dict[str, RowPart]


class TextCache:
    """LRU of per-sample prompt conditioning (``DiTBackend.conditioning``), ``size`` entries (0 = off)."""

    def __init__(self, size: int = 64):
        self.size = size
        self._rows: OrderedDict[bytes, Row] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> Row:
        self._rows.move_to_end(key)
        return self._rows[key]

    def put(self, key: bytes, row: Row) -> None:
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > max(self.size, 0):
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()


def cond_row(value: Any, i: int, shared: bool, device: torch.device) -> RowPart:
    """Sample ``i``'s part of one ``encode_prompts`` entry, tagged with how to join it back."""
    if value is None:
        return ("none", None)
    if isinstance(value, np.ndarray):
        return ("host", value[i])
    if shared:
        return ("shared", value.to(device))
    if isinstance(value, (list, tuple)):
        return ("list", value[i].to(device))
    return ("tensor", value[i].to(device))


def cond_join(rows: list[Row]) -> dict[str, Any]:
    """A batch's ``encode_prompts`` dict from per-sample rows (``cond_row``), in order."""
    out: dict[str, Any] = {}
    for name, (kind, first) in rows[0].items():
        if kind in ("none", "shared"):
            out[name] = first
        elif kind == "list":
            out[name] = [r[name][1] for r in rows]
        elif kind == "host":  # per-token host rows, padded like the tensors below
            parts = [r[name][1] for r in rows]
            n = max(p.shape[0] for p in parts)
            out[name] = np.stack(
                [np.concatenate([p, np.zeros((n - p.shape[0], *p.shape[1:]), p.dtype)]) for p in parts]
            )
        else:  # per-token rows of prompts of different lengths: zero (False) padded at the end
            parts = [r[name][1] for r in rows]
            n = max(p.shape[0] for p in parts)
            out[name] = torch.stack(
                [torch.cat([p, p.new_zeros(n - p.shape[0], *p.shape[1:])]) if p.shape[0] < n else p for p in parts]
            )
    return out
