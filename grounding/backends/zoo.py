"""Model names that resolve to local folders: the offline defaults.

``shapes-demo`` ships in the repository (and the bento). The ``tiny-*`` names are random pipelines
built on first use into the cache by the synthetic-model package of a checkout (``synthetic``),
found through the ``dit_grounding.synthetic`` entry point rather than imported: the inference
package holds no model builder, and an installation without them (a bento) says so.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "dit_grounding.synthetic"
# Shipped in the repository: the FLUX-architecture model trained on the shapes world.
SHIPPED = {"shapes-demo": Path(__file__).resolve().parents[2] / "models" / "shapes-demo"}


def _default() -> str:
    return "shapes-demo" if (SHIPPED["shapes-demo"] / "model_index.json").is_file() else "tiny-flux"


DEFAULT_MODEL = _default()


def cache_dir() -> Path:
    return Path(os.environ.get("GROUNDING_CACHE", Path.home() / ".cache" / "dit-grounding"))


def resolve(model: str | Path) -> str | Path:
    """A zoo name → its folder (built if missing); anything else is returned unchanged."""
    name = str(model)
    if name in SHIPPED:
        if not (SHIPPED[name] / "model_index.json").is_file():
            raise FileNotFoundError(f"{name} is not in this checkout ({SHIPPED[name]})")
        return SHIPPED[name]
    if name.startswith("tiny-"):
        synthetic = require_synthetic(f"the zoo name {name!r}")
        if name not in synthetic.names:
            raise FileNotFoundError(f"no zoo model {name!r}; the tiny ones are {', '.join(synthetic.names)}")
        folder = cache_dir() / name
        if not (folder / "model_index.json").is_file():
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            synthetic.save(tmp, synthetic.names[name])
            tmp.replace(folder) if not folder.exists() else None
        return folder
    return model


def synthetic_models() -> Any:
    """The synthetic-model provider installed beside the library (``synthetic.PLUGIN`` of a
    checkout: ``names``, ``archs``, ``save(folder, arch, seed, size)``), or None."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        return ep.load()
    return None


def require_synthetic(what: str) -> Any:
    """``synthetic_models()``, or a ``FileNotFoundError`` that says why ``what`` is unavailable."""
    found = synthetic_models()
    if found is None:
        raise FileNotFoundError(
            f"{what} needs the synthetic models of a dit-grounding checkout (pip install -e .), "
            "which this installation does not include"
        )
    return found


def default_model() -> str:
    """``$GROUNDING_MODEL`` or the project's offline default."""
    return os.environ.get("GROUNDING_MODEL") or DEFAULT_MODEL
