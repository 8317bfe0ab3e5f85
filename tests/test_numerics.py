"""Read-out numerics at the released models' attention shapes, in bf16 and fp16, on the CPU.

One attention call per architecture family at its released width (heads × head size) and
sequence layout at release resolution — joint text-first (FLUX.1, FLUX.2), joint image-first
(SD3.5, Z-Image), joint with masked batch padding (Qwen-Image: the stock-SDPA + chunked-lse path),
cross attention (Wan 2.1 14B, a 480p 81-frame clip's 32,760 video tokens against 512 UMT5 keys),
and HunyuanVideo's joint video + text (a 480p clip of 5 frames: the whole 129-frame sequence is
beyond a CPU) — through ``AttentionStore.attend``, the function every backbone's capture calls.
Queries and keys are drawn peaky on purpose (logit std ≈ √10 ≈ 3.2 and one strong "sink" key),
and the probabilities read out on the kept text columns are compared with a float64 softmax of
the same q and k over all keys, on every 8th image row (at most 512 rows).

Measured here (2 cores): max |error| / max probability ≤ 6.1e-5 and elementwise relative error
(probabilities ≥ 1e-4) ≤ 1.1e-4 in both dtypes, up to logit std 5.5; the bounds below leave ~3×.
FLUX.1 in bf16 in ``make test``; the rest slow (~1 min): ``make test-slow`` and CI run it.
"""

import math

import pytest
import torch

from grounding.backends.capture import AttentionStore, SequenceLayout, sdpa_with_lse

# family → (heads, head size, text keys, image queries, layout: "text-first" | "image-first" | "cross", masked)
FAMILIES = {
    "flux1": (24, 128, 512, 4096, "text-first", False),  # 19 + 38 blocks; T5 512; 1024² → 64²
    "flux2": (48, 128, 512, 4096, "text-first", False),  # 8 + 48 blocks; Mistral 512
    "sd35-large": (38, 64, 77 + 256, 4096, "image-first", False),  # CLIP 77 + T5 256
    "qwenimage": (24, 128, 64, 4096, "text-first", True),  # prompt-length text, batch padding masked
    "zimage": (30, 128, 64, 4096, "image-first", False),  # single stream; caption padded to ×32
    "wan14b": (40, 128, 512, 21 * 30 * 52, "cross", False),  # 480×832, 81 frames → 21 latent frames
    "hunyuanvideo": (24, 128, 256, 2 * 30 * 53, "image-first", False),  # 480×848, 5 frames → 2 latent
}
# FLUX.1 in bf16 runs in `make test` (the bounds asserted on every run); the other families and
# fp16 are slow (`make test-slow`, CI).
CASES = [
    pytest.param(
        family, dtype, id=f"{family}-{name}", marks=() if (family, name) == ("flux1", "bf16") else pytest.mark.slow
    )
    for family in FAMILIES
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"))
]
TEMPERATURE, SINK = 10.0, 8.0
MAX_ABS_OVER_MAX = 2e-4
MAX_ELEMENTWISE = 5e-4


def _qkv(heads, dim, q_len, k_len, sink_at, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, q_len, dim, generator=g) * math.sqrt(TEMPERATURE)
    k = torch.randn(1, heads, k_len, dim, generator=g) * math.sqrt(TEMPERATURE)
    k[:, :, sink_at] = q.std(dim=2) * SINK  # a key every query attends to strongly
    v = torch.randn(1, heads, k_len, dim, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _layout(kind: str, text: int, image: int) -> tuple[SequenceLayout, int, int]:
    """The call's layout, query length and key length."""
    if kind == "text-first":
        return SequenceLayout(image=slice(text, text + image), text=slice(0, text)), text + image, text + image
    if kind == "image-first":
        return SequenceLayout(image=slice(0, image), text=slice(image, image + text)), text + image, text + image
    return SequenceLayout(image=slice(0, image), text=slice(0, text), joint=False), image, text


@pytest.mark.parametrize("family,dtype", CASES)
@torch.no_grad()
def test_readout_matches_float64_at_released_shapes(family, dtype):
    heads, dim, text, image, kind, masked = FAMILIES[family]
    lay, q_len, k_len = _layout(kind, text, image)
    q, k, v = _qkv(heads, dim, q_len, k_len, lay.text.start + 3, dtype)
    columns = torch.arange(0, min(text, 48), 3)  # the prompt's and magnets' columns
    mask = None
    if masked:  # the last 16 text positions are batch padding: no query may attend to them
        mask = torch.ones(1, 1, 1, k_len, dtype=torch.bool)
        mask[..., lay.text.stop - 16 : lay.text.stop] = False
        columns = torch.cat([columns, torch.arange(text - 16, text, 4)])  # a batch's union keeps them
    store = AttentionStore(layout=lambda *_: lay, columns=columns)
    out = store.attend("block", q, k, v, attn_mask=mask)
    got = store.maps["block"][0].double()  # [1, H, N, C]
    assert got.shape == (1, heads, image, len(columns))
    assert torch.isfinite(out).all() and torch.isfinite(got).all()

    rows = torch.arange(0, image, max(8, image // 512))
    logits = q.double()[:, :, lay.image][:, :, rows] @ k.double().transpose(-1, -2) / math.sqrt(dim)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    ref = torch.softmax(logits, dim=-1)[..., lay.text.start + columns]
    err = (got[:, :, rows] - ref).abs()
    abs_over_max = (err.max() / ref.max()).item()
    big = ref >= 1e-4
    elementwise = (err[big] / ref[big]).max().item() if bool(big.any()) else 0.0
    print(f"{family} {dtype}: max|err|/max p {abs_over_max:.2e}, elementwise {elementwise:.2e}")
    assert abs_over_max <= MAX_ABS_OVER_MAX and elementwise <= MAX_ELEMENTWISE, (abs_over_max, elementwise)
    if masked:
        assert float(got[..., columns >= text - 16].abs().max()) == 0.0  # padding got no attention


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@torch.no_grad()
def test_the_fused_kernels_lse_is_the_one_used_and_exact(dtype):
    """Unmasked calls take the row log-sum-exp from the fused SDPA kernel itself (no second pass
    over the keys); at FLUX.1's shape it equals a float64 log-sum-exp."""
    q, k, v = _qkv(24, 128, 4608, 4608, 3, dtype)
    out, lse = sdpa_with_lse(q, k, v)
    assert lse is not None and lse.shape == (1, 24, 4608)
    assert torch.equal(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))  # the stock output
    rows = torch.arange(0, 4608, 64)
    ref = torch.logsumexp(q.double()[:, :, rows] @ k.double().transpose(-1, -2) / math.sqrt(128), dim=-1)
    assert (lse[:, :, rows].double() - ref).abs().max().item() <= 1e-3
