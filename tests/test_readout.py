"""Attention read-out is exact, and the model's output is untouched by capture."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fixtures import scene
from grounding.backends import load_backend
from grounding.backends.capture import AttentionStore
from grounding.config import MagnetConfig
from grounding.readout.tokens import align

MAX_LEN = 24


class RecordSDPA(TorchFunctionMode):
    """Records q, k of every stock ``F.scaled_dot_product_attention`` call (``[B, H, S, D]``)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q = kwargs.get("query", args[0] if args else None)
            k = kwargs.get("key", args[1] if len(args) > 1 else None)
            self.calls.append((q.detach().clone(), k.detach().clone()))
        return func(*args, **kwargs)


def _inputs(backend, expressions):
    tokens = [align(e, lambda p: backend.tokenize([p], MAX_LEN)[0], MagnetConfig()) for e in expressions]
    size = backend.input_size(64, 48, 64)
    latents = backend.encode_pixels([scene(seed=i) for i in range(len(tokens))], size)
    g = torch.Generator().manual_seed(3)
    noisy = 0.7 * latents + 0.3 * torch.randn(latents.shape, generator=g)
    cond = backend.encode_prompts([t.sequence for t in tokens])
    used = np.zeros(len(tokens[0].kinds), dtype=bool)
    for t in tokens:
        used |= t.kinds != 0
    return tokens, noisy, cond, np.flatnonzero(used)


def _store(backend, tokens, columns, n_img, **kw):
    text_len = len(tokens[0].kinds)
    return AttentionStore(
        layout=lambda block, q, k: backend.layout(block, q, k, text_len, n_img), columns=torch.from_numpy(columns), **kw
    )


def _n_img(backend, latents):
    rows, cols = backend.grid(latents)
    return rows * cols


@pytest.mark.parametrize("arch", ["flux", "sd3"])
@pytest.mark.parametrize("lse_source", ["fused", "separate"])
def test_capture_matches_float64_softmax_and_output_is_bit_identical(arch, lse_source, tiny_flux_dir, tiny_sd3_dir):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    backend = load_backend(tiny_flux_dir if arch == "flux" else tiny_sd3_dir)
    tokens, noisy, cond, columns = _inputs(backend, ["the red circle on the left", "blue square"])
    active = _AttentionBackendRegistry._active_backend

    rec = RecordSDPA()
    with rec:
        stock = backend.forward(noisy, 0.3, cond, 1.0)
    names = backend.block_names
    assert len(rec.calls) == len(names)

    store = _store(backend, tokens, columns, _n_img(backend, noisy), lse_source=lse_source)
    with backend.capturing(store, names):
        ours = backend.forward(noisy, 0.3, cond, 1.0)
    assert torch.equal(stock, ours), "capture changed the transformer output"
    # processors, hooks and diffusers' active attention backend are restored afterwards
    assert all(
        type(p).__name__ in ("FluxAttnProcessor", "JointAttnProcessor2_0")
        for p in backend.transformer.attn_processors.values()
    )
    assert _AttentionBackendRegistry._active_backend == active
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in backend.transformer.modules())

    text_len = len(tokens[0].kinds)
    for name, (q, k) in zip(names, rec.calls):
        lay = backend.layout(name, q.shape[2], k.shape[2], text_len, _n_img(backend, noisy))
        logits = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
        full = torch.softmax(logits, dim=-1)
        ref = full[:, :, lay.image][..., lay.text.start + torch.from_numpy(columns)]
        got = store.maps[name][0].double()
        assert got.shape == ref.shape
        rel = ((got - ref).abs().max() / ref.abs().max()).item()
        assert rel <= 1e-5, f"{arch} {name}: relative error {rel:.2e}"


def test_capture_of_selected_blocks_only(tiny_flux_dir):
    backend = load_backend(tiny_flux_dir)
    tokens, noisy, cond, columns = _inputs(backend, ["red circle"])
    stock = backend.forward(noisy, 0.3, cond, 1.0)
    store = _store(backend, tokens, columns, _n_img(backend, noisy))
    chosen = [backend.block_names[0], backend.block_names[-1]]
    with backend.capturing(store, chosen):
        ours = backend.forward(noisy, 0.3, cond, 1.0)
    assert sorted(store.maps) == sorted(chosen) and all(len(v) == 1 for v in store.maps.values())
    assert chosen[-1].startswith("single_transformer_blocks")
    assert torch.equal(stock, ours), "the blocks left alone run on the previous backend, unchanged"


def test_capture_reaches_processors_pinned_to_a_backend(tiny_flux_dir):
    """A model set to a backend (``set_attention_backend``) is captured too, and keeps its setting."""
    backend = load_backend(tiny_flux_dir)
    backend.transformer.set_attention_backend("native")
    tokens, noisy, cond, columns = _inputs(backend, ["red circle"])
    stock = backend.forward(noisy, 0.3, cond, 1.0)
    store = _store(backend, tokens, columns, _n_img(backend, noisy))
    with backend.capturing(store, backend.block_names):
        ours = backend.forward(noisy, 0.3, cond, 1.0)
    assert sorted(store.maps) == sorted(backend.block_names) and torch.equal(stock, ours)
    assert all(
        str(p._attention_backend) in ("native", "AttentionBackendName.NATIVE")
        for p in backend.transformer.attn_processors.values()
    )


def test_other_threads_forwards_are_not_captured(tiny_flux_dir):
    """The dispatcher backend is process-wide while a capture runs; a forward in another thread
    (no capture of its own) passes straight through and records nothing."""
    import threading

    backend = load_backend(tiny_flux_dir)
    tokens, noisy, cond, columns = _inputs(backend, ["red circle"])
    stock = backend.forward(noisy, 0.3, cond, 1.0)
    store = _store(backend, tokens, columns, _n_img(backend, noisy))
    other = {}
    with backend.capturing(store, [backend.block_names[0]]):
        t = threading.Thread(target=lambda: other.update(out=backend.forward(noisy, 0.3, cond, 1.0)))
        t.start()
        t.join()
    assert store.maps == {} and torch.equal(other["out"], stock)


def test_unknown_block_is_a_clear_error(flux_grounder, scene_image):
    with pytest.raises(ValueError, match="unknown blocks"):
        flux_grounder.segment(scene_image, "red circle", blocks=("nope.0",))
