"""What a backbone must provide (:class:`Backend`), and the common implementation for diffusers
MM-DiTs (:class:`DiTBackend`): pixels → latents → noised latents, prompts → the token sequence
the transformer receives, one transformer forward per noise level with attention captured.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Iterator, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from .capture import AttentionRecorder, AttentionStore, SequenceLayout, dispatcher_capture

# Role of each position of the text sequence the transformer receives.
PADDING, SPECIAL, TEMPLATE, TEXT = range(4)
ROLE_NAMES = ("padding", "special", "template", "text")


@dataclass(frozen=True)
class TokenSequence:
    """One prompt's text tokens exactly as the transformer receives them (length ``T``).

    Per position ``t``: ``stream[t]`` indexes ``streams`` (which text encoder made it), ``roles[t]``
    is ``TEXT`` (a token of the prompt, its characters ``spans[t]`` = ``[start, end)`` in
    ``prompt``), ``SPECIAL`` (BOS/EOS), ``TEMPLATE`` (a chat template's or system message's
    token) or ``PADDING``; ``ids[t]`` is the token id fed to that stream's encoder. ``overflow``
    names the streams that cut the prompt short.
    """

    prompt: str
    streams: tuple[str, ...]
    stream: np.ndarray  # int8 [T]
    roles: np.ndarray  # int8 [T]
    spans: np.ndarray  # int32 [T, 2], -1 where roles != TEXT
    ids: np.ndarray  # int64 [T]
    overflow: tuple[str, ...] = ()
    # Where the text encoder's input differs from ``ids`` (a template prefix the pipeline crops
    # off its output, padding it strips): that exact input, and per position ``t`` the encoder
    # output it takes (-1: not from the encoder, e.g. Z-Image's caption padding).
    encoder: EncoderInput | None = None

    def __len__(self) -> int:
        return len(self.roles)


@dataclass(frozen=True)
class EncoderInput:
    """A text encoder's input as the pipeline builds it: ids and attention mask ``[E]``, and
    ``positions`` ``[T]``: the encoder output position behind each sequence position, or -1."""

    ids: np.ndarray  # int64 [E]
    mask: np.ndarray  # bool [E]
    positions: np.ndarray  # int64 [T]


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


@runtime_checkable
class Backend(Protocol):
    """What the engine needs from a backbone. ``DiTBackend`` implements it for diffusers MM-DiTs;
    a model registers its subclass with ``grounding.backends.register_backend``."""

    arch: str
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

    def capture(self, images: list[Image.Image], sequences: list[TokenSequence], size: tuple[int, int],
                timesteps: tuple[float, ...], seed: int, guidance_scale: float = 3.5,
                blocks: list[str] | None = None, lse_source: str = "fused",
                image_keep: torch.Tensor | None = None, early_exit: bool = True) -> Capture:
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
        arrays = [np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) for im in images]
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
        return [m for name, m in self.pipe.components.items()
                if name.startswith("text_encoder") and isinstance(m, torch.nn.Module)]

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
                rows[k] = {name: _cond_row(v, i, name in self.cond_shared, self.device) for name, v in cond.items()}
                self.text_cache.put(k, rows[k])
        return _cond_join([rows[k] for k in keys])

    @torch.no_grad()
    def capture(self, images: list[Image.Image], sequences: list[TokenSequence], size: tuple[int, int],
                timesteps: tuple[float, ...], seed: int, guidance_scale: float = 3.5,
                blocks: list[str] | None = None, lse_source: str = "fused",
                image_keep: torch.Tensor | None = None, early_exit: bool = True) -> Capture:
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
        store = AttentionStore(layout=lambda block, q, k: self.layout(block, q, k, text_len, grid[0] * grid[1]),
                               columns=torch.from_numpy(columns), lse_source=lse_source, image_keep=image_keep)
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


def sequence_key(seq: TokenSequence) -> bytes:
    """What ``encode_prompts`` reads of a sequence: prompt text, ids, roles, encoder input."""
    parts = [seq.prompt.encode("utf-8", "surrogatepass"), seq.ids.tobytes(), seq.roles.tobytes()]
    if seq.encoder is not None:
        parts += [seq.encoder.ids.tobytes(), seq.encoder.mask.tobytes(), seq.encoder.positions.tobytes()]
    return b"\x00".join(hashlib.sha1(p).digest() for p in parts)


class TextCache:
    """LRU of per-sample prompt conditioning (``DiTBackend.conditioning``), ``size`` entries (0 = off)."""

    def __init__(self, size: int = 64):
        self.size = size
        self._rows: OrderedDict[bytes, dict] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> dict:
        self._rows.move_to_end(key)
        return self._rows[key]

    def put(self, key: bytes, row: dict) -> None:
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > max(self.size, 0):
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()


def _cond_row(value, i: int, shared: bool, device: torch.device):
    """Sample ``i``'s part of one ``encode_prompts`` entry, tagged with how to join it back."""
    if value is None:
        return ("none", None)
    if shared:
        return ("shared", value.to(device))
    if isinstance(value, (list, tuple)):
        return ("list", value[i].to(device))
    return ("tensor", value[i].to(device))


def _cond_join(rows: list[dict]) -> dict:
    out = {}
    for name, (kind, first) in rows[0].items():
        if kind in ("none", "shared"):
            out[name] = first
        elif kind == "list":
            out[name] = [r[name][1] for r in rows]
        else:  # per-token rows of prompts of different lengths: zero (False) padded at the end
            parts = [r[name][1] for r in rows]
            n = max(p.shape[0] for p in parts)
            out[name] = torch.stack([torch.cat([p, p.new_zeros(n - p.shape[0], *p.shape[1:])]) if p.shape[0] < n
                                     else p for p in parts])
    return out


def tokenize_stream(tokenizer, prompt: str, length: int, stream: int) -> tuple[np.ndarray, ...]:
    """One tokenizer's positions for ``prompt``, padded/truncated to ``length`` as diffusers'
    pipelines call it: (ids, roles, spans, stream index) and whether the prompt overflowed."""
    enc = tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                    return_offsets_mapping=True, return_attention_mask=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    roles, spans = place_tokens(enc, 0, np.arange(len(prompt)))
    overflow = len(tokenizer(prompt, add_special_tokens=True)["input_ids"]) > length
    return ids, roles, spans, np.full(length, stream, dtype=np.int8), overflow


def place_tokens(enc: dict, start: int, char_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Roles and prompt spans of one tokenizer call's positions from their character offsets: the
    prompt's text begins at ``start`` of the tokenized text and ``char_map`` maps each of its
    characters to the prompt (-1: dropped). Masked → ``PADDING``; no characters (BOS/EOS) →
    ``SPECIAL``; characters of the prompt → ``TEXT`` with their span; other characters →
    ``TEMPLATE``."""
    mask = np.asarray(enc["attention_mask"], dtype=bool)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    roles = np.full(len(mask), PADDING, dtype=np.int8)
    spans = np.full((len(mask), 2), -1, dtype=np.int32)
    for i in np.flatnonzero(mask):
        s, e = int(offsets[i, 0]), int(offsets[i, 1])
        if e <= s:
            roles[i] = SPECIAL
            continue
        inside = char_map[max(s - start, 0):max(min(e - start, len(char_map)), 0)]
        inside = inside[inside >= 0]
        if len(inside):
            roles[i] = TEXT
            spans[i] = (inside.min(), inside.max() + 1)
        else:
            roles[i] = TEMPLATE
    return roles, spans


def join_streams(prompt: str, names: tuple[str, ...], parts: list[tuple[np.ndarray, ...]]) -> TokenSequence:
    """A ``TokenSequence`` from per-stream ``tokenize_stream`` parts, concatenated in order."""
    ids, roles, spans, stream = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return TokenSequence(prompt, names, stream, roles, spans, ids,
                         tuple(n for n, p in zip(names, parts) if p[4]))


def pad_sequence(seq: TokenSequence, length: int, pad_id: int) -> TokenSequence:
    """``seq`` with ``PADDING`` positions appended up to ``length``."""
    n = length - len(seq)
    if n < 0:
        raise ValueError(f"sequence of {len(seq)} positions is longer than {length}")
    if n == 0:
        return seq
    enc = seq.encoder
    if enc is not None:
        enc = replace(enc, positions=np.concatenate([enc.positions, np.full(n, -1, np.int64)]))
    return replace(seq, stream=np.concatenate([seq.stream, np.full(n, seq.stream[-1] if len(seq) else 0, np.int8)]),
                   roles=np.concatenate([seq.roles, np.full(n, PADDING, np.int8)]),
                   spans=np.concatenate([seq.spans, np.full((n, 2), -1, np.int32)]),
                   ids=np.concatenate([seq.ids, np.full(n, pad_id, np.int64)]), encoder=enc)


# --- chat templates ------------------------------------------------------------------------------
_SENTINEL = "\ue000PROMPT\ue001"


def locate_prompt(render: Callable[[str], str], prompt: str) -> tuple[str, int, np.ndarray]:
    """Where a chat template put the prompt: (rendered text, offset of the prompt's text in it,
    ``char_map`` — for each character of that inserted text, its index in ``prompt`` or -1).

    The template is rendered once around a sentinel to learn its prefix and suffix; a template
    that edits the prompt (FLUX.2 drops ``[IMG]``, some trim whitespace) is followed character by
    character. Raises ``ValueError`` when the prompt's place cannot be told.
    """
    probe = render(_SENTINEL)
    if probe.count(_SENTINEL) != 1:
        raise ValueError("the chat template does not insert the prompt exactly once; cannot align its tokens")
    prefix, suffix = probe.split(_SENTINEL)
    text = render(prompt)
    if not (text.startswith(prefix) and text.endswith(suffix) and len(text) >= len(prefix) + len(suffix)):
        raise ValueError("the chat template's text around the prompt depends on the prompt; cannot align its tokens")
    inner = text[len(prefix): len(text) - len(suffix)]
    char_map = np.full(len(inner), -1, dtype=np.int64)
    if inner == prompt:
        char_map[:] = np.arange(len(inner))
    else:
        for a, b, n in difflib.SequenceMatcher(None, inner, prompt, autojunk=False).get_matching_blocks():
            char_map[a:a + n] = np.arange(b, b + n)
    return text, len(prefix), char_map


@dataclass(frozen=True)
class TemplateTokens:
    """One tokenizer call over a rendered chat template, per position: ``ids``, attention
    ``mask``, ``roles`` (``TEXT`` for tokens with characters of the prompt, their ``spans`` in the
    prompt; ``TEMPLATE`` for other tokens with characters — system message, role markers,
    ``[INST]``; ``SPECIAL`` for tokens with none; ``PADDING`` where masked) and ``full_length``,
    the untruncated token count."""

    ids: np.ndarray  # int64 [E]
    mask: np.ndarray  # bool [E]
    roles: np.ndarray  # int8 [E]
    spans: np.ndarray  # int32 [E, 2]
    full_length: int

    def sequence(self, prompt: str, stream_names: tuple[str, ...], select: np.ndarray | None = None,
                 tail_padding: int = 0, pad_id: int = 0, overflow: bool = False,
                 encoder: bool = False) -> TokenSequence:
        """The positions ``select`` (default all) as a ``TokenSequence`` of stream 0, with
        ``tail_padding`` ``PADDING`` positions appended; ``encoder``: record that the text
        encoder reads this whole call and the sequence takes its outputs at ``select``."""
        sel = np.arange(len(self.ids)) if select is None else np.asarray(select, dtype=np.int64)
        seq = TokenSequence(prompt, stream_names, np.zeros(len(sel), np.int8), self.roles[sel], self.spans[sel],
                            self.ids[sel], stream_names[:1] if overflow else (),
                            EncoderInput(self.ids, self.mask, sel) if encoder else None)
        return pad_sequence(seq, len(sel) + tail_padding, pad_id)


def template_tokens(tokenizer, render: Callable[[str], str], prompt: str, add_special_tokens: bool | None = None,
                    **call) -> TemplateTokens:
    """Tokenize ``render(prompt)`` as a pipeline does (``call``: its padding / truncation /
    max_length), each position placed by its character offsets (see ``locate_prompt``).
    ``add_special_tokens=None``: as a processor's ``apply_chat_template`` decides (off when the
    rendered text already starts with the BOS token)."""
    text, start, char_map = locate_prompt(render, prompt)
    if add_special_tokens is None:
        bos = getattr(tokenizer, "bos_token", None)
        add_special_tokens = not (bos and text.startswith(bos))
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                    return_attention_mask=True, **call)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=bool)
    roles, spans = place_tokens(enc, start, char_map)
    full = len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    return TemplateTokens(ids, mask, roles, spans, full)
