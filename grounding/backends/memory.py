"""Memory options for loading a backbone, all through diffusers' and accelerate's own mechanisms.

``offload``: ``"model"`` (``pipe.enable_model_cpu_offload``: each component moves to the GPU while
it runs) or ``"sequential"`` (``enable_sequential_cpu_offload``: layer by layer, slowest, least
memory). ``quantization``: ``"int8"`` / ``"nf4"`` (bitsandbytes) or ``"fp8"`` (torchao float8
weight-only) for the transformer and the text encoders, as diffusers'
``PipelineQuantizationConfig`` applies it while loading. ``text_encoder_device``: where the text
encoders live and run (``"cpu"`` keeps T5-XXL / Mistral off the card; only the embeddings move);
``text_offload``: they wait on the CPU and visit the GPU per call. The VAE decoder is dropped
after loading unless ``keep_vae_decoder`` (grounding never decodes).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ..config import ConfigError  # a ValueError: a choice the caller made

Offload = Literal["model", "sequential"]
Quantization = Literal["int8", "nf4", "fp8"]
_PACKAGES = {"int8": "bitsandbytes", "nf4": "bitsandbytes", "fp8": "torchao"}


@dataclass(frozen=True)
class MemoryOptions:
    offload: Offload | None = None
    quantization: Quantization | None = None
    text_encoder_device: str | None = None  # None: the model's device
    text_offload: bool = False
    keep_vae_decoder: bool = False
    text_cache_size: int = 64  # prompt embeddings kept (0: no cache)

    def __post_init__(self):
        if self.offload not in (None, *get_args(Offload)):
            raise ConfigError(f"offload must be one of {list(get_args(Offload))} or None, got {self.offload!r}")
        if self.quantization not in (None, *get_args(Quantization)):
            raise ConfigError(
                f"quantization must be one of {list(get_args(Quantization))} or None, got {self.quantization!r}"
            )
        if self.text_cache_size < 0:
            raise ConfigError(f"text_cache_size must be ≥ 0, got {self.text_cache_size}")
        if self.text_encoder_device is not None:
            torch.device(self.text_encoder_device)  # a clear error for a bad name
        if self.offload and self.text_encoder_device is not None:
            raise ConfigError("offload and text_encoder_device both place the text encoders; choose one")

    def check(self, device: str | torch.device) -> None:
        """Raise ``ConfigError`` (a ``ValueError``) for a choice this machine cannot make, before any
        weight is read."""
        needs_cuda = [f"offload={self.offload!r}"] if self.offload else []
        needs_cuda += [f"quantization={self.quantization!r}"] if self.quantization else []
        needs_cuda += ["text_offload"] if self.text_offload else []
        if needs_cuda and (torch.device(device).type != "cuda" or not torch.cuda.is_available()):
            raise ConfigError(
                f"{', '.join(needs_cuda)} needs a CUDA device; "
                f"{'this machine has none' if not torch.cuda.is_available() else f'device is {device}'}"
            )
        if (
            self.text_encoder_device
            and torch.device(self.text_encoder_device).type == "cuda"
            and not torch.cuda.is_available()
        ):
            raise ConfigError(f"text_encoder_device={self.text_encoder_device!r} needs CUDA; this machine has none")
        package = _PACKAGES.get(self.quantization or "")
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"quantization={self.quantization!r} needs the {package} package (pip install {package})")
        if self.offload and importlib.util.find_spec("accelerate") is None:
            raise ConfigError("offload needs the accelerate package (pip install accelerate)")


def quantization_config(kind: Quantization, components: list[str], dtype: torch.dtype):
    """diffusers' ``PipelineQuantizationConfig`` for ``kind``, applied to the pipeline's
    ``transformer`` (a diffusers model) and its ``text_encoder*`` (transformers models); the VAE,
    tokenizers and scheduler stay as they are."""
    import diffusers
    import transformers
    from diffusers.quantizers import PipelineQuantizationConfig

    package = _PACKAGES[kind]
    if kind != "int8" and importlib.util.find_spec(package) is None:  # int8 configs build without it
        raise ConfigError(f"quantization={kind!r} needs the {package} package (pip install {package})")

    def make(lib):
        if kind == "int8":
            return lib.BitsAndBytesConfig(load_in_8bit=True)
        if kind == "nf4":
            return lib.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        from torchao.quantization import Float8WeightOnlyConfig

        return lib.TorchAoConfig(quant_type=Float8WeightOnlyConfig())

    mapping = {}
    for name in components:
        if name in ("transformer", "transformer_2"):  # transformer_2: Wan 2.2's low-noise expert
            mapping[name] = make(diffusers)
        elif name.startswith("text_encoder"):
            mapping[name] = make(transformers)
    return PipelineQuantizationConfig(quant_mapping=mapping)


class DroppedModule(torch.nn.Module):
    """Stands where a module was freed: no weights; calling it says how to keep it."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            f"the VAE's {self.name} was dropped after loading (grounding never decodes); "
            "load with MemoryOptions(keep_vae_decoder=True) to keep it"
        )


def drop_vae_decoder(vae: torch.nn.Module) -> None:
    """Free the VAE's decoder half (grounding only encodes)."""
    for name in ("decoder", "post_quant_conv"):
        if isinstance(getattr(vae, name, None), torch.nn.Module):
            setattr(vae, name, DroppedModule(name))
