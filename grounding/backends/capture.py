"""One capture mechanism for every MM-DiT: image-query → text-key attention probabilities read
out of the attention call itself, with no ``[S, S]`` matrix built.

Most diffusers transformers (FLUX, FLUX.2, Qwen-Image, Z-Image, Wan, HunyuanVideo 1.5, LTX-2, ...)
compute attention through ``diffusers.models.attention_dispatch.dispatch_attention_fn``. For the
duration of a capture, :func:`dispatcher_capture` registers an attention backend with diffusers'
``_AttentionBackendRegistry`` and makes it the active one; forward pre-hooks on the captured
attention modules say which block is calling. Calls from other blocks (and from any other model
in the process) pass straight through to the backend that was active before. A model whose
processor calls SDPA itself (SD3's ``JointAttnProcessor2_0``) gets :class:`SD3CaptureProcessor`,
which calls the same core, :meth:`AttentionStore.attend`.

One module (~400 lines) on purpose: the store, the exact-probability kernels and the two routes
into them are one mechanism, and every number a map is made of passes through it.

The core computes the block's output with the fused SDPA kernel that SDPA itself would pick and,
from the same kernel, the row log-sum-exp over ALL keys; the probabilities of image queries on
the kept text keys are then ``exp(q·k·scale − lse)``: exact softmax values, and the transformer's
output is bit-identical to stock (tested).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, cast

import torch
import torch.nn.functional as F

__all__ = [
    "SequenceLayout",
    "AttentionRecorder",
    "AttentionStore",
    "dispatcher_capture",
    "SD3CaptureProcessor",
    "sdpa_with_lse",
    "chunked_lse",
]


@dataclass(frozen=True)
class SequenceLayout:
    """Where image queries and text keys sit in ONE attention call.

    ``image``: the query positions that are image tokens; ``text``: the key positions that are
    text tokens (padding included). Joint attention (FLUX, SD3, Qwen-Image) has both in one
    sequence; cross attention (Wan-style video DiTs) has image queries and text-only keys. Other
    positions (reference-image tokens, registers) are in neither slice.
    """

    image: slice
    text: slice
    joint: bool = True  # text tokens are also queries (only then can text→image keys be masked)


# (block name, query length, key length) → that call's layout. Backends provide one per capture.
LayoutFn = Callable[[str, int, int], SequenceLayout]


class AttentionRecorder(Protocol):
    """What a capture calls for every attention of a captured block (q, k, v ``[B, H, S, D]``)."""

    def attend(
        self,
        block: str,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> torch.Tensor:
        """The attention output ``[B, H, Sq, D]``, exactly as stock SDPA computes it."""
        ...


@dataclass
class AttentionStore:
    """The exact read-out recorder: image→text probabilities of every captured block.

    ``columns`` are text positions (counted from the start of the text segment) to keep;
    ``maps[block]`` is a list (one entry per attention call) of float32 ``[B, H, N, C]``: image
    token ``n``'s attention probability on kept text position ``columns[c]``, per head.
    """

    layout: LayoutFn
    columns: torch.Tensor  # long [C]
    lse_source: str = "fused"  # "fused" (from the SDPA kernel) | "separate" (stock SDPA + chunked lse)
    # bool [B, N]: image tokens text queries may attend to (None = all). Image rows, and so the
    # recorded probabilities' normalisation, are untouched; later blocks see the masked text.
    image_keep: torch.Tensor | None = None
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def text_mask(self, lay: SequenceLayout, q_len: int, device: torch.device) -> torch.Tensor | None:
        """Boolean SDPA mask ``[B, 1, S, S]`` hiding dropped image keys from text queries."""
        if self.image_keep is None or bool(self.image_keep.all()) or not lay.joint:
            return None
        keep = self.image_keep.to(device)
        allowed = torch.ones(keep.shape[0], 1, q_len, q_len, dtype=torch.bool, device=device)
        allowed[:, 0, lay.text, lay.image] = keep[:, None, :]
        return allowed

    def attend(
        self,
        block: str,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> torch.Tensor:
        lay = self.layout(block, q.shape[2], k.shape[2])
        mask = _combine_masks(attn_mask, self.text_mask(lay, q.shape[2], q.device))
        if mask is None and scale is None and self.lse_source == "fused":
            out, lse = sdpa_with_lse(q, k, v)
        else:  # the fused kernels take no mask: stock SDPA, lse computed below
            out, lse = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), None
        if lse is None:
            lse = chunked_lse(q, k, lay.image, mask, scale)
        self.record(block, q, k, lse, lay, mask, scale)
        return out

    def record(
        self,
        block: str,
        q: torch.Tensor,
        k: torch.Tensor,
        lse: torch.Tensor,
        lay: SequenceLayout,
        mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> None:
        """Store image→text probabilities from q, k ``[B, H, S, D]`` and lse ``[B, H, Sq]``."""
        cols = self.columns.to(q.device) + lay.text.start
        logits = _logits(q[:, :, lay.image], k[:, :, cols], scale)
        if mask is not None:
            logits = _masked(logits, _mask_rows(mask, lay.image)[..., cols])
        self.maps.setdefault(block, []).append(torch.exp(logits - lse[:, :, lay.image, None].float()))


def _logits(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.matmul(q.float(), k.float().transpose(-1, -2)) * s


def _combine_masks(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """One SDPA mask from a model's own (bool or additive, 2-D ``[B, Sk]`` or 4-D) and ours (bool)."""
    if a is not None and a.ndim == 2:
        a = a[:, None, None, :]
    if a is None or b is None:
        return a if b is None else b
    if a.dtype == torch.bool:
        return a & b
    return a.masked_fill(~b, float("-inf"))


def _mask_rows(mask: torch.Tensor, rows: slice) -> torch.Tensor:
    return mask[..., rows, :] if mask.shape[-2] > 1 else mask


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return logits.masked_fill(~mask, float("-inf"))
    return logits + mask.float()


_LSE_CHECKED: dict[tuple, bool] = {}


def _lse_agrees(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, key: tuple) -> bool:
    """Once per (kernel, device, dtype): does the kernel's lse match a direct log-sum-exp on a
    few rows? (Kernels differ in layout and base; a mismatch sends us to the chunked lse.)"""
    if key not in _LSE_CHECKED:
        rows = slice(0, min(8, q.shape[2]))
        ref = torch.logsumexp(_logits(q[:, :, rows], k, None), dim=-1)
        got = lse[:, :, rows].float()
        _LSE_CHECKED[key] = got.shape == ref.shape and bool(torch.allclose(got, ref, atol=5e-2, rtol=1e-3))
    return _LSE_CHECKED[key]


def sdpa_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``F.scaled_dot_product_attention`` output ``[B, H, S, D]`` and row log-sum-exp ``[B, H, S]``.

    Calls the kernel that SDPA itself would dispatch to for these inputs (asked with
    ``torch._fused_sdp_choice``: flash / memory-efficient / cuDNN on CUDA, the flash kernel on
    CPU), so the output is the stock output; returns ``lse=None`` where that kernel exposes no
    usable lse (the caller then computes it in row chunks).
    """
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)
        return out, lse
    if q.device.type == "cuda":
        from torch.nn.attention import SDPBackend

        try:
            choice = int(torch._fused_sdp_choice(q, k, v))
        except (RuntimeError, AttributeError, TypeError):
            choice = -1
        try:
            if choice == SDPBackend.FLASH_ATTENTION.value:
                res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)
                out, lse = res[0], res[1]
            elif choice == SDPBackend.EFFICIENT_ATTENTION.value:
                res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)
                out, lse = res[0], res[1][..., : q.shape[2]]
            elif choice == SDPBackend.CUDNN_ATTENTION.value:
                res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False)
                out, lse = res[0], res[1]
                if lse.dim() == 4:
                    lse = lse[..., 0]
            else:
                return F.scaled_dot_product_attention(q, k, v), None
            if _lse_agrees(q, k, lse, (choice, q.device.index, q.dtype)):
                return out, lse
            return out, None
        except RuntimeError:
            pass
    return F.scaled_dot_product_attention(q, k, v), None


def chunked_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    rows: slice,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Row log-sum-exp over all (unmasked) keys for query rows ``rows``, ``chunk`` rows at a
    time → ``[B, H, Sq]`` float32. Rows outside ``rows`` are left at 0 (they are never read)."""
    out = torch.zeros(q.shape[:3], dtype=torch.float32, device=q.device)
    for s in range(rows.start, rows.stop, chunk):
        e = min(s + chunk, rows.stop)
        logits = _logits(q[:, :, s:e], k, scale)
        if mask is not None:
            logits = _masked(logits, _mask_rows(mask, slice(s, e)))
        out[:, :, s:e] = torch.logsumexp(logits, dim=-1)
    return out


# --- the dispatcher path ------------------------------------------------------------------------
_BACKEND_NAME = "dit_grounding_capture"


@dataclass
class _Session:
    recorder: AttentionRecorder
    block: str | None = None


_SESSION: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("dit_grounding_capture", default=None)
_LOCK = threading.Lock()


@dataclass
class _Active:
    """The dispatcher backend ours stands in for while any capture runs (one per process)."""

    count: int = 0
    previous: Any = None  # its name (an AttentionBackendName)
    fn: Callable[..., torch.Tensor] | None = None
    args: frozenset[str] = frozenset()


_ACTIVE = _Active()


def _capture_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    _parallel_config=None,
) -> torch.Tensor:
    """The registered backend: ``[B, S, H, D]`` in and out, as every diffusers backend."""
    session = _SESSION.get()
    block = session.block if session is not None else None
    if session is None or block is None:  # not a captured block (or not this thread's capture): the previous backend
        return _call_previous(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
            _parallel_config=_parallel_config,
        )
    if dropout_p or is_causal or enable_gqa or _parallel_config is not None:
        raise NotImplementedError(
            f"block {block}: capture supports neither dropout, causal masks, GQA nor context parallelism"
        )
    q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
    return session.recorder.attend(block, q, k, v, attn_mask, scale).permute(0, 2, 1, 3)


def _call_previous(query, key, value, **kwargs):
    """The backend we stand in for, given only the arguments it takes."""
    assert _ACTIVE.fn is not None
    return _ACTIVE.fn(query=query, key=key, value=value, **{k: v for k, v in kwargs.items() if k in _ACTIVE.args})


@contextlib.contextmanager
def _backend_active() -> Iterator[None]:
    """Register our backend and make it diffusers' active one while any capture runs."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry as Registry

    with _LOCK:
        if _BACKEND_NAME not in Registry._backends:
            Registry.register(cast(Any, _BACKEND_NAME))(_capture_attention)  # our own name, not an enum member
        if _ACTIVE.count == 0:
            name, fn = Registry.get_active_backend()
            _ACTIVE.previous, _ACTIVE.fn, _ACTIVE.args = name, fn, frozenset(Registry._supported_arg_names[name])
            Registry.set_active_backend(_BACKEND_NAME)
        _ACTIVE.count += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE.count -= 1
            if _ACTIVE.count == 0:
                Registry.set_active_backend(_ACTIVE.previous)


@contextlib.contextmanager
def dispatcher_capture(modules: dict[str, torch.nn.Module], recorder: AttentionRecorder) -> Iterator[AttentionRecorder]:
    """Route the attention of ``modules`` (block name → its attention module) to ``recorder``.

    Processors that were pinned to a backend (``set_attention_backend``) are unpinned for the
    duration, so their calls reach the dispatcher's active backend; everything is restored after.
    """
    session = _Session(recorder)
    handles, pinned = [], []
    for name, module in modules.items():

        def enter(_m, _args, name=name):
            session.block = name

        def leave(_m, _args, _out):
            session.block = None

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
        proc: Any = getattr(module, "processor", None)
        if getattr(proc, "_attention_backend", None) is not None:
            pinned.append((proc, proc._attention_backend))
            proc._attention_backend = None
    token = _SESSION.set(session)
    try:
        with _backend_active():
            yield recorder
    finally:
        _SESSION.reset(token)
        for h in handles:
            h.remove()
        for proc, backend in pinned:
            proc._attention_backend = backend


# --- the processor path (models that call SDPA themselves) --------------------------------------
class SD3CaptureProcessor:
    """Drop-in for diffusers' ``JointAttnProcessor2_0`` (SD3 / SD3.5 joint blocks), which calls
    SDPA itself: the same computation, with attention through ``recorder.attend``."""

    def __init__(self, recorder: AttentionRecorder, block: str):
        self.recorder = recorder
        self.block = block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        n_img = hidden_states.shape[1]
        b = hidden_states.shape[0]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = (
            heads(attn.to_q(hidden_states)),
            heads(attn.to_k(hidden_states)),
            heads(attn.to_v(hidden_states)),
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            eq = heads(attn.add_q_proj(encoder_hidden_states))
            ek = heads(attn.add_k_proj(encoder_hidden_states))
            ev = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query = torch.cat([query, eq], dim=2)
            key = torch.cat([key, ek], dim=2)
            value = torch.cat([value, ev], dim=2)

        hidden_states = self.recorder.attend(self.block, query, key, value, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(b, -1, query.shape[1] * query.shape[-1])
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :n_img], hidden_states[:, n_img:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states
