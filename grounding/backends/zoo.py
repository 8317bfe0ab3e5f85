"""Model names that resolve to local folders: the offline defaults."""

from __future__ import annotations

import os
from pathlib import Path

# Built on first use into the cache (deterministic, seed 0); their maps are meaningless.
TINY = {"tiny-flux": "flux", "tiny-sd3": "sd3", "tiny-flux2": "flux2", "tiny-flux2-klein": "flux2-klein",
        "tiny-qwenimage": "qwenimage", "tiny-zimage": "zimage"}
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
    if name in TINY:
        folder = cache_dir() / name
        if not (folder / "model_index.json").is_file():
            from .tiny import save_tiny_model

            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            save_tiny_model(tmp, TINY[name])
            tmp.replace(folder) if not folder.exists() else None
        return folder
    return model


def default_model() -> str:
    """``$GROUNDING_MODEL`` or the project's offline default."""
    return os.environ.get("GROUNDING_MODEL") or DEFAULT_MODEL
