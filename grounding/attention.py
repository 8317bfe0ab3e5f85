"""Attention processors that read image-query → text-key probabilities out of MM-DiT blocks.

Each processor computes the block's normal output with the fused SDPA kernel and, from the same
kernel, the row log-sum-exp over ALL keys. The probabilities of image queries on the kept text
keys are then ``exp(q·k/√d − lse)``: exact softmax values, with no ``[S, S]`` matrix built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class AttentionStore:
    """Shared by all capture processors of one transformer; the backend fills in the layout.

    Text positions are counted from the start of the text part of the joint sequence.
    ``maps[block]`` is a list (one entry per forward) of float32 ``[B, H, N, C]``: image token
    ``n``'s attention probability on kept text position ``columns[c]``, per head.
    """

    text_len: int = 0
    image_first: bool = False  # SD3: image tokens first; FLUX: text first
    columns: torch.Tensor | None = None  # long [C]
    lse_source: str = "fused"  # "fused" (from the SDPA kernel) | "separate" (stock SDPA + chunked lse)
    # bool [B, N]: image tokens text queries may attend to (None = all). Image rows, and so the
    # recorded probabilities' normalisation, are untouched; later blocks see the masked text.
    image_keep: torch.Tensor | None = None
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def text_mask(self, seq_len: int, device: torch.device) -> torch.Tensor | None:
        """Boolean SDPA mask ``[B, 1, S, S]`` hiding dropped image keys from text queries."""
        if self.image_keep is None or bool(self.image_keep.all()):
            return None
        n_img = seq_len - self.text_len
        keep = self.image_keep.to(device)
        allowed = torch.ones(keep.shape[0], 1, seq_len, seq_len, dtype=torch.bool, device=device)
        txt = slice(n_img, seq_len) if self.image_first else slice(0, self.text_len)
        img = slice(0, n_img) if self.image_first else slice(self.text_len, seq_len)
        allowed[:, 0, txt, img] = keep[:, None, :]
        return allowed

    def slices(self, seq_len: int, device: torch.device) -> tuple[slice, torch.Tensor]:
        """Image query rows and absolute text key columns for a joint sequence of ``seq_len``."""
        n_img = seq_len - self.text_len
        if self.image_first:
            return slice(0, n_img), self.columns.to(device) + n_img
        return slice(self.text_len, seq_len), self.columns.to(device)

    def record(self, block: str, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor) -> None:
        """Store image→text probabilities from q, k ``[B, H, S, D]`` and lse ``[B, H, S]``."""
        rows, cols = self.slices(q.shape[2], q.device)
        qi = q[:, :, rows].float()
        kt = k[:, :, cols].float()
        logits = torch.matmul(qi, kt.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        probs = torch.exp(logits - lse[:, :, rows, None].float())
        self.maps.setdefault(block, []).append(probs)


_LSE_CHECKED: dict[tuple, bool] = {}


def _lse_agrees(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, key: tuple) -> bool:
    """Once per (kernel, device, dtype): does the kernel's lse match a direct log-sum-exp on a
    few rows? (Kernels differ in layout and base; a mismatch sends us to the chunked lse.)"""
    if key not in _LSE_CHECKED:
        rows = slice(0, min(8, q.shape[2]))
        ref = torch.logsumexp(torch.matmul(q[:, :, rows].float(), k.float().transpose(-1, -2))
                              * (1.0 / math.sqrt(q.shape[-1])), dim=-1)
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


def chunked_lse(q: torch.Tensor, k: torch.Tensor, rows: slice, chunk: int = 1024) -> torch.Tensor:
    """Row log-sum-exp over all keys for query rows ``rows``, ``chunk`` rows at a time → ``[B, H, S]``.

    Rows outside ``rows`` are left at 0 (they are never read).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.zeros(q.shape[:3], dtype=torch.float32, device=q.device)
    kf = k.float()
    start, stop = rows.start, rows.stop
    for s in range(start, stop, chunk):
        e = min(s + chunk, stop)
        out[:, :, s:e] = torch.logsumexp(torch.matmul(q[:, :, s:e].float(), kf.transpose(-1, -2)) * scale, dim=-1)
    return out


def _attend(store: AttentionStore, block: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention output for q, k, v ``[B, H, S, D]``; records the block's text probabilities."""
    mask = store.text_mask(q.shape[2], q.device)
    if mask is not None:  # the fused kernels take no mask: stock SDPA, lse computed below
        out, lse = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    elif store.lse_source == "fused":
        out, lse = sdpa_with_lse(q, k, v)
    else:
        out, lse = F.scaled_dot_product_attention(q, k, v), None
    if lse is None:
        rows, _ = store.slices(q.shape[2], q.device)
        lse = chunked_lse(q, k, rows)
    store.record(block, q, k, lse)
    return out


class CaptureProcessorBase:
    """Holds the store and block name; ``attend`` is the one place attention is computed."""

    def __init__(self, store: AttentionStore, block: str):
        self.store = store
        self.block = block

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention output ``[B, H, S, D]``; records this block's image→text probabilities."""
        return _attend(self.store, self.block, q, k, v)


class FluxCaptureAttnProcessor(CaptureProcessorBase):
    """Drop-in for diffusers' ``FluxAttnProcessor`` (dual- and single-stream blocks) that also
    records image→text probabilities into ``store`` under the name ``block``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        if attention_mask is not None:
            raise NotImplementedError("attention masks are not supported by the capture processor")
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # [B, S, H, D] → [B, H, S, D] views, exactly as diffusers' native backend passes them.
        q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
        hidden_states = self.attend(q, k, v).permute(0, 2, 1, 3)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            n_txt = encoder_hidden_states.shape[1]
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [n_txt, hidden_states.shape[1] - n_txt], dim=1
            )
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


class SD3CaptureAttnProcessor(CaptureProcessorBase):
    """Drop-in for diffusers' ``JointAttnProcessor2_0`` (SD3 / SD3.5 joint blocks) that also
    records image→text probabilities into ``store`` under the name ``block``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if attention_mask is not None:
            raise NotImplementedError("attention masks are not supported by the capture processor")
        n_img = hidden_states.shape[1]
        b = hidden_states.shape[0]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
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

        hidden_states = self.attend(query, key, value)
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
