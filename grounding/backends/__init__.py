"""Backbones: a registry keyed by the diffusers pipeline class, and the loader.

A new MM-DiT registers its ``DiTBackend`` subclass::

    @register_backend("QwenImagePipeline", "QwenImageImg2ImgPipeline")
    class QwenImageBackend(DiTBackend): ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from .base import Backend, Capture, DiTBackend
from .capture import AttentionRecorder, AttentionStore, SequenceLayout
from .flux import FluxBackend
from .flux2 import Flux2Backend, Flux2KleinBackend
from .hunyuanvideo import HunyuanVideoBackend
from .memory import MemoryOptions, drop_vae_decoder, quantization_config
from .qwenimage import QwenImageBackend
from .sd3 import SD3Backend
from .sequences import PADDING, ROLE_NAMES, SPECIAL, TEMPLATE, TEXT, TokenSequence
from .wan import WanBackend
from .zimage import ZImageBackend

__all__ = [
    "Backend",
    "DiTBackend",
    "Capture",
    "TokenSequence",
    "SequenceLayout",
    "AttentionRecorder",
    "AttentionStore",
    "BACKENDS",
    "register_backend",
    "backend_class",
    "load_backend",
    "pipeline_class_name",
    "resolve_dtype",
    "MemoryOptions",
    "pipeline_index",
    "PADDING",
    "SPECIAL",
    "TEMPLATE",
    "TEXT",
    "ROLE_NAMES",
]

# diffusers pipeline class name → (backend class, the pipeline class to load the folder with).
BACKENDS: dict[str, tuple[type[DiTBackend], str]] = {}


def register_backend(*pipeline_classes: str, load_as: str | None = None) -> Callable[[type], type]:
    """Register a backend for these diffusers pipeline class names (``model_index.json``'s
    ``_class_name``); the folder is loaded with ``load_as`` (default: the first name)."""

    def deco(cls: type) -> type:
        for name in pipeline_classes:
            BACKENDS[name] = (cls, load_as or pipeline_classes[0])
        return cls

    return deco


register_backend("FluxPipeline", "FluxImg2ImgPipeline")(FluxBackend)
register_backend("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")(SD3Backend)
register_backend("Flux2Pipeline")(Flux2Backend)
register_backend("Flux2KleinPipeline", "Flux2KleinKVPipeline", load_as="Flux2KleinPipeline")(Flux2KleinBackend)
register_backend("QwenImagePipeline", "QwenImageImg2ImgPipeline")(QwenImageBackend)
register_backend("ZImagePipeline", "ZImageImg2ImgPipeline")(ZImageBackend)
register_backend("WanPipeline", "WanVideoToVideoPipeline")(WanBackend)
register_backend("HunyuanVideoPipeline")(HunyuanVideoBackend)


def pipeline_index(model: str | Path) -> dict:
    """``model_index.json`` of a pipeline folder or hub repo."""
    path = Path(model)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ValueError(f"{model} has no model_index.json: not a diffusers pipeline folder")
        return json.loads(index.read_text())
    from diffusers import DiffusionPipeline

    return dict(DiffusionPipeline.load_config(str(model)))


def pipeline_class_name(model: str | Path) -> str:
    """``_class_name`` of a pipeline folder or hub repo's ``model_index.json``."""
    return pipeline_index(model)["_class_name"]


def backend_class(pipeline_class: str) -> tuple[type[DiTBackend], str]:
    if pipeline_class not in BACKENDS:
        raise ValueError(f"pipeline {pipeline_class} is not supported; supported: {sorted(BACKENDS)}")
    return BACKENDS[pipeline_class]


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """A dtype name or ``torch.dtype``; None = bf16 on CUDA, fp32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_backend(
    model: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = torch.float32,
    memory: MemoryOptions | None = None,
) -> DiTBackend:
    """Load a registered pipeline (hub id or local folder) in eval mode and wrap it in its backend;
    ``memory`` places, offloads or quantizes it (``MemoryOptions``, checked before any weight is read)."""
    import diffusers

    memory = memory or MemoryOptions()
    dtype = resolve_dtype(dtype, device)
    memory.check(device)
    index = pipeline_index(model)
    cls, load_as = backend_class(index["_class_name"])
    kwargs = {}
    if memory.quantization:
        components = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
        kwargs["quantization_config"] = quantization_config(memory.quantization, components, dtype)
    pipe = getattr(diffusers, load_as).from_pretrained(str(model), dtype=dtype, **kwargs)
    if not memory.keep_vae_decoder:
        drop_vae_decoder(pipe.vae)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    backend = cls(pipe, device, text_cache_size=memory.text_cache_size)
    if memory.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif memory.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        text_device = torch.device(memory.text_encoder_device or device)
        home = torch.device("cpu") if memory.text_offload else text_device
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                try:
                    module.to(home if name.startswith("text_encoder") else device)
                except ValueError:  # bitsandbytes int8 weights are placed while loading, and refuse .to
                    if not _quantized(module):
                        raise
        backend.text_device = torch.device(device) if memory.text_offload else text_device
        backend.text_offload = memory.text_offload
    return backend


def _quantized(module: torch.nn.Module) -> bool:
    return bool(
        getattr(module, "is_loaded_in_8bit", False)
        or getattr(module, "is_loaded_in_4bit", False)
        or getattr(module, "quantization_method", None)
    )
