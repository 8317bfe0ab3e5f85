"""Attention read-out is exact, and the model's output is untouched by capture."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from conftest import scene
from grounding.attention import AttentionStore
from grounding.backends import load_backend
from grounding.config import MagnetConfig
from grounding.tokens import align

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
    tokens = [align(e, backend.streams(MAX_LEN), MagnetConfig()) for e in expressions]
    size = backend.input_size(64, 48, 64)
    latents = backend.encode_images([scene(seed=i) for i in range(len(tokens))], size)
    g = torch.Generator().manual_seed(3)
    noisy = 0.7 * latents + 0.3 * torch.randn(latents.shape, generator=g)
    cond = backend.encode_text([t.prompt for t in tokens], MAX_LEN)
    used = np.zeros(len(tokens[0].kinds), dtype=bool)
    for t in tokens:
        used |= t.kinds != 0
    return tokens, noisy, cond, np.flatnonzero(used)


@pytest.mark.parametrize("arch", ["flux", "sd3"])
@pytest.mark.parametrize("lse_source", ["fused", "separate"])
def test_capture_matches_float64_softmax_and_output_is_bit_identical(arch, lse_source, tiny_flux_dir, tiny_sd3_dir):
    backend = load_backend(tiny_flux_dir if arch == "flux" else tiny_sd3_dir)
    tokens, noisy, cond, columns = _inputs(backend, ["the red circle on the left", "blue square"])

    rec = RecordSDPA()
    with rec:
        stock = backend.forward(noisy, 0.3, cond, 1.0)
    names = backend.block_names
    assert len(rec.calls) == len(names)

    text_len = backend.text_length(MAX_LEN)
    store = AttentionStore(text_len=text_len, image_first=backend.image_first,
                           columns=torch.from_numpy(columns), lse_source=lse_source)
    with backend.capturing(store, names):
        ours = backend.forward(noisy, 0.3, cond, 1.0)
    assert torch.equal(stock, ours), "capture changed the transformer output"
    # processors are restored afterwards
    assert all(type(p).__name__ in ("FluxAttnProcessor", "JointAttnProcessor2_0")
               for p in backend.transformer.attn_processors.values())

    for name, (q, k) in zip(names, rec.calls):
        s = q.shape[2]
        n_img = s - text_len
        logits = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
        full = torch.softmax(logits, dim=-1)
        if backend.image_first:
            ref = full[:, :, :n_img][..., n_img + torch.from_numpy(columns)]
        else:
            ref = full[:, :, text_len:][..., torch.from_numpy(columns)]
        got = store.maps[name][0].double()
        assert got.shape == ref.shape
        rel = ((got - ref).abs().max() / ref.abs().max()).item()
        assert rel <= 1e-5, f"{arch} {name}: relative error {rel:.2e}"


def test_capture_of_selected_blocks_only(tiny_flux_dir):
    backend = load_backend(tiny_flux_dir)
    tokens, noisy, cond, columns = _inputs(backend, ["red circle"])
    store = AttentionStore(text_len=backend.text_length(MAX_LEN), columns=torch.from_numpy(columns))
    chosen = [backend.block_names[0], backend.block_names[-1]]
    with backend.capturing(store, chosen):
        backend.forward(noisy, 0.3, cond, 1.0)
    assert sorted(store.maps) == sorted(chosen)
    assert chosen[-1].startswith("single_transformer_blocks")


def test_unknown_block_is_a_clear_error(flux_grounder, scene_image):
    with pytest.raises(ValueError, match="unknown blocks"):
        flux_grounder.segment(scene_image, "red circle", blocks=("nope.0",))
