"""Backends: one transformer forward over a noised image latent, with attention capture.

A backend owns a diffusers pipeline (FLUX or SD3/3.5) and knows its sequence layout: how images
become latents and tokens, how prompts become text streams, and where blocks live.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .attention import AttentionStore, FluxCaptureAttnProcessor, SD3CaptureAttnProcessor
from .tokens import PAD, PromptTokens, TextStream


@dataclass
class Capture:
    """Attention read out of one batch.

    ``probs`` is float32 ``[L, V, B, H, N, C]``: blocks × noise levels × batch × heads × image
    tokens × kept text positions ``columns`` (``N = grid[0] * grid[1]``, row-major).
    """

    probs: torch.Tensor
    block_names: list[str]
    timesteps: tuple[float, ...]
    columns: np.ndarray  # int [C] text positions kept
    grid: tuple[int, int]  # image tokens (rows, cols)
    tokens: list[PromptTokens]

    def sample(self, b: int) -> tuple[torch.Tensor, np.ndarray]:
        """``[L, V, H, N, C]`` probabilities and the column kinds ``[C]`` of sample ``b``."""
        return self.probs[:, :, b], self.tokens[b].kinds[self.columns]


class Backend:
    """Common flow; subclasses supply the model-specific layout."""

    arch = ""
    processor_cls: type = FluxCaptureAttnProcessor
    image_first = False

    def __init__(self, pipe, device: str | torch.device = "cpu"):
        self.pipe = pipe
        self.device = torch.device(device)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.dtype = self.transformer.dtype
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)

    # --- layout -------------------------------------------------------------------------------
    @property
    def block_names(self) -> list[str]:
        """Attention blocks that see both text and image tokens, in depth order."""
        return [k.removesuffix(".attn.processor") for k in self.transformer.attn_processors if k.endswith(".attn.processor")]

    @property
    def patch(self) -> int:
        """Image pixels per token side."""
        raise NotImplementedError

    def default_max_sequence_length(self) -> int:
        raise NotImplementedError

    def max_resolution(self) -> int | None:
        return None

    def streams(self, max_sequence_length: int) -> list[TextStream]:
        raise NotImplementedError

    def text_length(self, max_sequence_length: int) -> int:
        return sum(s.length for s in self.streams(max_sequence_length))

    def input_size(self, width: int, height: int, resolution: int) -> tuple[int, int]:
        """(W, H) fed to the VAE: long side ≈ ``resolution``, each a multiple of ``patch``."""
        cap = self.max_resolution()
        if cap:
            resolution = min(resolution, cap)
        p = self.patch
        scale = resolution / max(width, height)
        w = max(p, int(round(width * scale / p)) * p)
        h = max(p, int(round(height * scale / p)) * p)
        return w, h

    # --- stages -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """RGB images → clean VAE latents ``[B, C, h, w]`` (shifted and scaled as the pipeline does)."""
        arrays = [np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
        x = x.to(self.device, self.vae.dtype)
        z = self.vae.encode(x).latent_dist.mode()
        shift = self.vae.config.shift_factor or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).to(self.dtype)

    def encode_text(self, prompts: list[str], max_sequence_length: int) -> dict:
        raise NotImplementedError

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        """The transformer's prediction for noised ``latents`` at noise level ``sigma``."""
        raise NotImplementedError

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        raise NotImplementedError

    @contextlib.contextmanager
    def capturing(self, store: AttentionStore, blocks: list[str]):
        """Swap capture processors into ``blocks`` for the duration; restore the originals after."""
        original = self.transformer.attn_processors
        procs = dict(original)
        for name in blocks:
            procs[f"{name}.attn.processor"] = self.processor_cls(store, name)
        self.transformer.set_attn_processor(procs)
        try:
            yield store
        finally:
            self.transformer.set_attn_processor(dict(original))

    @torch.no_grad()
    def capture(
        self,
        images: list[Image.Image],
        tokens: list[PromptTokens],
        size: tuple[int, int],
        timesteps: tuple[float, ...],
        seed: int,
        max_sequence_length: int,
        guidance_scale: float = 3.5,
        blocks: list[str] | None = None,
        lse_source: str = "fused",
        image_keep: torch.Tensor | None = None,
    ) -> Capture:
        """One transformer forward per noise level for a batch of (image, prompt) pairs.

        Every sample gets the same seeded noise, so a sample's map does not depend on its batch.
        ``image_keep`` (bool ``[B, N]``) hides the other image tokens from the text queries.
        """
        if len(images) != len(tokens):
            raise ValueError("images and prompts differ in number")
        for t in timesteps:
            if not 0.0 <= t < 1.0:
                raise ValueError(f"noise level {t} outside [0, 1)")
        names = self.block_names if blocks is None else list(blocks)
        unknown = set(names) - set(self.block_names)
        if unknown:
            raise ValueError(f"unknown blocks {sorted(unknown)}; this model has {self.block_names}")
        latents = self.encode_images(images, size)
        g = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(latents.shape[1:], generator=g, dtype=torch.float32)
        noise = noise.to(self.device, latents.dtype).expand_as(latents)
        cond = self.encode_text([t.prompt for t in tokens], max_sequence_length)
        used = np.zeros(len(tokens[0].kinds), dtype=bool)
        for t in tokens:
            used |= t.kinds != PAD
        columns = np.flatnonzero(used)
        store = AttentionStore(
            text_len=self.text_length(max_sequence_length), image_first=self.image_first,
            columns=torch.from_numpy(columns), lse_source=lse_source, image_keep=image_keep,
        )
        with self.capturing(store, names):
            for sigma in timesteps:
                noisy = (1.0 - sigma) * latents + sigma * noise
                self.forward(noisy, sigma, cond, guidance_scale)
        probs = torch.stack([torch.stack(store.maps[n]) for n in names]).cpu()
        return Capture(probs, names, tuple(timesteps), columns, self.grid(latents), tokens)


class FluxBackend(Backend):
    """FLUX.1 (dev / schnell) and FLUX-architecture pipelines: text first, then image."""

    arch = "flux"
    processor_cls = FluxCaptureAttnProcessor
    image_first = False

    @property
    def patch(self) -> int:
        return self.vae_scale * 2

    def default_max_sequence_length(self) -> int:
        return 512

    def streams(self, max_sequence_length: int) -> list[TextStream]:
        return [TextStream("t5", self.pipe.tokenizer_2, 0, max_sequence_length)]

    def encode_text(self, prompts: list[str], max_sequence_length: int) -> dict:
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        return {"embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype), "text_ids": text_ids}

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        return latents.shape[2] // 2, latents.shape[3] // 2

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        b, c, h, w = latents.shape
        packed = self.pipe._pack_latents(latents, b, c, h, w)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, self.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), guidance_scale, device=self.device, dtype=torch.float32)
        return self.transformer(
            hidden_states=packed,
            timestep=torch.full((b,), sigma, device=self.device, dtype=self.dtype),
            guidance=guidance,
            pooled_projections=cond["pooled"],
            encoder_hidden_states=cond["embeds"],
            txt_ids=cond["text_ids"],
            img_ids=img_ids,
            return_dict=False,
        )[0]


class SD3Backend(Backend):
    """Stable Diffusion 3 / 3.5: image first, then CLIP-L/G (77) and T5 text tokens."""

    arch = "sd3"
    processor_cls = SD3CaptureAttnProcessor
    image_first = True

    @property
    def patch(self) -> int:
        return self.vae_scale * self.transformer.config.patch_size

    def default_max_sequence_length(self) -> int:
        return 256

    def max_resolution(self) -> int | None:
        m = self.transformer.config.pos_embed_max_size
        return m * self.patch if m else None

    def streams(self, max_sequence_length: int) -> list[TextStream]:
        clip_len = self.pipe.tokenizer_max_length
        streams = [TextStream("clip", self.pipe.tokenizer, 0, clip_len)]
        if self.pipe.text_encoder_3 is not None:
            streams.append(TextStream("t5", self.pipe.tokenizer_3, clip_len, max_sequence_length))
        return streams

    def text_length(self, max_sequence_length: int) -> int:
        # Without T5 the pipeline still appends ``max_sequence_length`` zero embeddings.
        return self.pipe.tokenizer_max_length + max_sequence_length

    def encode_text(self, prompts: list[str], max_sequence_length: int) -> dict:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=max_sequence_length,
        )
        return {"embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype)}

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        p = self.transformer.config.patch_size
        return latents.shape[2] // p, latents.shape[3] // p

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        b = latents.shape[0]
        return self.transformer(
            hidden_states=latents,
            timestep=torch.full((b,), sigma * 1000.0, device=self.device, dtype=self.dtype),
            encoder_hidden_states=cond["embeds"],
            pooled_projections=cond["pooled"],
            return_dict=False,
        )[0]


BACKENDS = {"FluxPipeline": FluxBackend, "StableDiffusion3Pipeline": SD3Backend}


def pipeline_class_name(model: str | Path) -> str:
    """``_class_name`` of a pipeline folder or hub repo's ``model_index.json``."""
    import json

    path = Path(model)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ValueError(f"{model} has no model_index.json: not a diffusers pipeline folder")
        return json.loads(index.read_text())["_class_name"]
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.load_config(str(model))["_class_name"]


def load_backend(model: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Backend:
    """Load a FLUX or SD3 pipeline (hub id or local folder) and wrap it in its backend."""
    import diffusers

    name = pipeline_class_name(model)
    family = {"FluxPipeline": "FluxPipeline", "FluxImg2ImgPipeline": "FluxPipeline",
              "StableDiffusion3Pipeline": "StableDiffusion3Pipeline",
              "StableDiffusion3Img2ImgPipeline": "StableDiffusion3Pipeline"}.get(name)
    if family is None:
        raise ValueError(f"{model}: pipeline {name} is not supported (FLUX and SD3/3.5 are)")
    pipe = getattr(diffusers, family).from_pretrained(str(model), dtype=dtype)
    pipe.to(device)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return BACKENDS[family](pipe, device)
