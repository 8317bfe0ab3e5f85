"""What a backbone must provide (:class:`Backend`), and the common implementation for diffusers
MM-DiTs (:class:`DiTBackend`): pixels → latents → noised latents, prompts → the token sequence
the transformer receives, one transformer forward per noise level with attention captured.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from PIL import Image

from .capture import AttentionRecorder, AttentionStore, SequenceLayout, dispatcher_capture
from .sequences import PADDING, TokenSequence, pad_sequence, sequence_key
from .text_cache import TextCache, cond_join, cond_row


@dataclass(frozen=True)
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
    text_len: int = 0  # text positions of the batch (sequences shorter than it were padded)

    def sample(self, b: int) -> torch.Tensor:
        """``[L, V, H, N, C]`` probabilities of sample ``b``."""
        return self.probs[:, :, b]

    def only(self, names: Sequence[str] | None) -> "Capture":
        """The capture restricted to the blocks ``names`` (None = all of them), in this capture's order."""
        if names is None or list(names) == self.block_names:
            return self
        missing = set(names) - set(self.block_names)
        if missing:
            raise ValueError(f"blocks {sorted(missing)} were not captured (captured: {self.block_names})")
        idx = [i for i, n in enumerate(self.block_names) if n in set(names)]
        return dataclasses.replace(self, probs=self.probs[idx], block_names=[self.block_names[i] for i in idx])


@runtime_checkable
class Backend(Protocol):
    """What the engine needs from a backbone. ``DiTBackend`` implements it for diffusers MM-DiTs;
    a model registers its subclass with ``grounding.backends.register_backend``."""

    arch: ClassVar[str]
    device: torch.device
    dtype: torch.dtype

    @property
    def block_names(self) -> list[str]:
        """Attention blocks whose image queries see text keys, in depth order."""
        ...

    @property
    def patch(self) -> int:
        """Image pixels per token side."""
        ...

    def default_max_sequence_length(self) -> int: ...

    def input_size(self, width: int, height: int, resolution: int) -> tuple[int, int]:
        """(W, H) fed to the VAE: long side ≈ ``resolution``, each a multiple of ``patch``."""
        ...

    def encode_pixels(self, images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """Images (or a clip's frames) → clean normalised latents, ``[B, C, h, w]`` (video: ``[B, C, F, h, w]``)."""
        ...

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """Latents noised to level ``sigma`` ∈ [0, 1)."""
        ...

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        """Each prompt's token sequence exactly as the transformer will receive it."""
        ...

    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        """Text conditioning made from exactly those sequences' ids."""
        ...

    def layout(self, block: str, q_len: int, k_len: int, text_len: int, image_len: int) -> SequenceLayout:
        """Where image queries and text keys sit in one attention call of ``block`` (``text_len``
        text positions, ``image_len`` = rows × cols image tokens of the target image)."""
        ...

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        """One transformer forward over noised ``latents``."""
        ...

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        """Image tokens (rows, cols) of ``latents``."""
        ...

    def capturing(self, recorder: AttentionRecorder, blocks: list[str]) -> contextlib.AbstractContextManager:
        """Route ``blocks``' attention to ``recorder`` for the duration."""
        ...

    def capture(
        self,
        images: list[Image.Image],
        sequences: list[TokenSequence],
        size: tuple[int, int],
        timesteps: tuple[float, ...],
        seed: int,
        guidance_scale: float = 3.5,
        blocks: list[str] | None = None,
        lse_source: str = "fused",
        image_keep: torch.Tensor | None = None,
        early_exit: bool = True,
    ) -> Capture:
        """One forward per noise level for a batch of (image, prompt) pairs; with ``early_exit``
        each forward stops right after the last captured block."""
        ...


class DiTBackend:
    """Common flow of diffusers MM-DiTs. Subclasses give the per-model metadata (class
    attributes) and the model-specific steps (``tokenize``, ``encode_prompts``, ``forward``, ...)."""

    arch: ClassVar[str] = ""
    # Per-model metadata: the transformer's block lists, in depth order, and each block's
    # attention module attribute; how attention is reached (diffusers' dispatcher, or a processor
    # that calls SDPA itself).
    block_lists: ClassVar[tuple[str, ...]] = ("transformer_blocks",)
    attention_attr: ClassVar[str] = "attn"
    capture_via: ClassVar[Literal["dispatcher", "processor"]] = "dispatcher"
    # Rectified flow (x_t = (1 − σ)·x₀ + σ·ε) and the timestep the transformer takes for σ.
    timestep_scale: ClassVar[float] = 1.0
    # True when the pipeline feeds each prompt's own length (Qwen-Image, Z-Image): a batch is then
    # padded to its longest sequence, and the padding masked out of attention.
    variable_text_length: ClassVar[bool] = False
    # Entries of ``encode_prompts``' dict without a batch dimension (shared by every sample).
    cond_shared: ClassVar[tuple[str, ...]] = ()
    # True for video DiTs, whose inputs are clips (``capture_clip``); an image is a one-frame clip.
    video: ClassVar[bool] = False

    def __init__(self, pipe, device: str | torch.device = "cpu", text_cache_size: int = 64):
        self.pipe = pipe
        self.device = torch.device(device)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.dtype = self.transformer.dtype
        self.vae_scale = self.vae_scale_factor()
        # Where the text encoders run (``text_encoder_device``); ``text_offload``: they wait on the
        # CPU and visit ``device`` only while encoding.
        self.text_device = self.device
        self.text_offload = False
        self.text_cache = TextCache(text_cache_size)
        self.encoder_calls = 0  # encode_prompts calls (the cache's misses), for tests and stats

    def vae_scale_factor(self) -> int:
        """Pixels per latent side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # --- layout ---------------------------------------------------------------------------------
    @property
    def block_names(self) -> list[str]:
        return [f"{lst}.{i}" for lst in self.block_lists for i in range(len(getattr(self.transformer, lst, ())))]

    def attention_module(self, block: str) -> torch.nn.Module:
        return self.transformer.get_submodule(f"{block}.{self.attention_attr}")

    @property
    def patch(self) -> int:
        raise NotImplementedError

    def default_max_sequence_length(self) -> int:
        raise NotImplementedError

    def max_resolution(self) -> int | None:
        return None

    def input_size(self, width: int, height: int, resolution: int) -> tuple[int, int]:
        cap = self.max_resolution()
        if cap:
            resolution = min(resolution, cap)
        p = self.patch
        scale = resolution / max(width, height)
        w = max(p, int(round(width * scale / p)) * p)
        h = max(p, int(round(height * scale / p)) * p)
        return w, h

    def layout(self, block: str, q_len: int, k_len: int, text_len: int, image_len: int) -> SequenceLayout:
        """Where image and text positions sit in block ``block``'s attention (per model)."""
        raise NotImplementedError

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        """Each prompt as the sequence the transformer receives (per model)."""
        raise NotImplementedError

    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        """The transformer's text conditioning for a batch of sequences, as the pipeline makes it (per model)."""
        raise NotImplementedError

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        """One transformer forward at noise level ``sigma`` (per model)."""
        raise NotImplementedError

    def pad_id(self) -> int:
        """Token id written at batch-padding positions (never attended: masked out)."""
        return 0

    def pad_batch(self, sequences: list[TokenSequence]) -> list[TokenSequence]:
        """Sequences of one batch brought to one length (``variable_text_length`` backends)."""
        lengths = {len(s) for s in sequences}
        if len(lengths) == 1:
            return sequences
        if not self.variable_text_length:
            raise ValueError(f"prompts of one batch must share a text length, got {sorted(lengths)}")
        return [pad_sequence(s, max(lengths), self.pad_id()) for s in sequences]

    # --- stages ---------------------------------------------------------------------------------
    def pixels(self, images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """RGB images resized to ``size`` = (W, H) → ``[B, 3, H, W]`` in [-1, 1], on the VAE's device and dtype."""
        arrays = [
            np.asarray(im.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.float32) for im in images
        ]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
        return x.to(self.device, self.vae.dtype)

    @torch.no_grad()
    def encode_pixels(self, images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """RGB images → clean VAE latents ``[B, C, h, w]``, shifted and scaled as the pipeline does."""
        z = self.vae.encode(self.pixels(images, size)).latent_dist.mode()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).to(self.dtype)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return (1.0 - sigma) * latents + sigma * noise

    def timesteps(self, sigma: float, batch: int) -> torch.Tensor:
        """The transformer's ``timestep`` argument for noise level ``sigma``."""
        return torch.full((batch,), sigma * self.timestep_scale, device=self.device, dtype=self.dtype)

    def guidance(self, batch: int, scale: float) -> torch.Tensor | None:
        """The ``guidance`` input of guidance-distilled transformers (``config.guidance_embeds``), else None."""
        if not getattr(self.transformer.config, "guidance_embeds", False):
            return None
        return torch.full((batch,), scale, device=self.device, dtype=torch.float32)

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        p = self.patch // self.vae_scale
        return latents.shape[-2] // p, latents.shape[-1] // p

    @contextlib.contextmanager
    def capturing(self, recorder: AttentionRecorder, blocks: list[str]) -> Iterator[AttentionRecorder]:
        if self.capture_via == "dispatcher":
            with dispatcher_capture({b: self.attention_module(b) for b in blocks}, recorder):
                yield recorder
            return
        original = self.transformer.attn_processors
        procs = dict(original)
        for b in blocks:
            procs[f"{b}.{self.attention_attr}.processor"] = self.capture_processor(recorder, b)
        self.transformer.set_attn_processor(procs)
        try:
            yield recorder
        finally:
            self.transformer.set_attn_processor(dict(original))

    def capture_processor(self, recorder: AttentionRecorder, block: str):
        raise NotImplementedError

    def text_encoders(self) -> list[torch.nn.Module]:
        return [
            m
            for name, m in self.pipe.components.items()
            if name.startswith("text_encoder") and isinstance(m, torch.nn.Module)
        ]

    @torch.no_grad()
    def conditioning(self, sequences: list[TokenSequence]) -> dict:
        """``encode_prompts`` through the prompt-embedding cache: each distinct sequence of the batch
        not seen recently is encoded once (in one call), the batch assembled from per-sample rows on
        ``device`` (per-token rows of shorter prompts zero-padded, as ``pad_batch`` pads their
        sequences). With ``text_offload`` the encoders visit ``device`` for that call only."""
        keys = [sequence_key(s) for s in sequences]
        distinct = dict.fromkeys(keys)
        rows = {k: self.text_cache.get(k) for k in distinct if k in self.text_cache}
        missing = [k for k in distinct if k not in rows]
        if missing:
            first = dict(zip(keys, sequences))
            encoders = self.text_encoders() if self.text_offload else []
            for m in encoders:
                m.to(self.device)
            try:
                self.encoder_calls += 1
                cond = self.encode_prompts(self.pad_batch([first[k] for k in missing]))
            finally:
                for m in encoders:
                    m.to("cpu")
                if encoders and self.device.type == "cuda":
                    torch.cuda.empty_cache()
            for i, k in enumerate(missing):
                rows[k] = {name: cond_row(v, i, name in self.cond_shared, self.device) for name, v in cond.items()}
                self.text_cache.put(k, rows[k])
        return cond_join([rows[k] for k in keys])

    @torch.no_grad()
    def capture(
        self,
        images: list[Image.Image],
        sequences: list[TokenSequence],
        size: tuple[int, int],
        timesteps: tuple[float, ...],
        seed: int,
        guidance_scale: float = 3.5,
        blocks: list[str] | None = None,
        lse_source: str = "fused",
        image_keep: torch.Tensor | None = None,
        early_exit: bool = True,
    ) -> Capture:
        """Every sample gets the same seeded noise, so a sample's map does not depend on its batch.
        ``image_keep`` (bool ``[B, N]``) hides the other image tokens from the text queries.
        ``early_exit``: each forward stops right after the last captured block's attention (the
        maps are the same: a block never sees the ones after it)."""
        if len(images) != len(sequences):
            raise ValueError("images and prompts differ in number")
        cond_of = sequences  # the cache keys each prompt by its own sequence, before batch padding
        sequences = self.pad_batch(sequences)
        for t in timesteps:
            if not 0.0 <= t < 1.0:
                raise ValueError(f"noise level {t} outside [0, 1)")
        names = self.block_names if blocks is None else list(blocks)
        unknown = set(names) - set(self.block_names)
        if unknown:
            raise ValueError(f"unknown blocks {sorted(unknown)}; this model has {self.block_names}")
        latents = self.encode_pixels(images, size)
        g = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(latents.shape[1:], generator=g, dtype=torch.float32)
        noise = noise.to(self.device, latents.dtype).expand_as(latents)
        cond = self.conditioning(cond_of)
        used = np.zeros(len(sequences[0]), dtype=bool)
        for s in sequences:
            used |= s.roles != PADDING
        columns = np.flatnonzero(used)
        text_len, grid = len(used), self.grid(latents)
        store = AttentionStore(
            layout=lambda block, q, k: self.layout(block, q, k, text_len, grid[0] * grid[1]),
            columns=torch.from_numpy(columns),
            lse_source=lse_source,
            image_keep=image_keep,
        )
        last = self.attention_module(max(names, key=self.block_names.index)) if early_exit else None
        with self.capturing(store, names), stop_after(last):
            for sigma in timesteps:
                try:
                    self.forward(self.add_noise(latents, noise, sigma), sigma, cond, guidance_scale)
                except StopForward:
                    pass  # the last captured block has run: nothing after it can change a map
        probs = torch.stack([torch.stack(store.maps[n]) for n in names])
        if probs.device.type != "meta":  # a dry run on the meta device (bench/gpu_suite.py) has shapes only
            probs = probs.cpu()
        return Capture(probs, names, tuple(timesteps), columns, grid, text_len)


class StopForward(Exception):
    """Raised right after the last captured block: the rest of the forward is never computed."""


@contextlib.contextmanager
def stop_after(module: torch.nn.Module | None) -> Iterator[None]:
    """While active, ``module``'s forward ends the whole forward (``StopForward``) once it returns."""
    if module is None:
        yield
        return

    def hook(_module, _args, _output):
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
