"""Speed and memory: early exit after the last captured block, the prompt-embedding cache, text
encoder placement, and the offload / quantization options (as far as a CPU-only machine allows)."""

import numpy as np
import pytest
import torch

from fixtures import scene
from grounding.backends import MemoryOptions, load_backend
from grounding.backends.memory import quantization_config
from grounding.backends.sequences import sequence_key
from grounding.config import MagnetConfig
from grounding.readout.tokens import align

ALL = ["flux", "sd3", "flux2", "flux2-klein", "qwenimage", "zimage"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from synthetic import save_tiny_model

    root = tmp_path_factory.mktemp("mem")
    return {a: save_tiny_model(root / a, a) for a in ALL}


def _seq(b, text="the red circle on the left"):
    return align(text, lambda p: b.tokenize([p], 32 if b.arch in ("flux", "sd3") else 96)[0], MagnetConfig()).sequence


@pytest.mark.parametrize("arch", ALL)
def test_early_exit_runs_nothing_after_the_last_captured_block(arch, dirs):
    b = load_backend(dirs[arch])
    names = b.block_names
    first_half = names[: max(1, len(names) // 2)]
    after = [b.transformer.get_submodule(n) for n in names[len(first_half) :]]
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in after]
    size, seqs = b.input_size(64, 48, 64), [_seq(b)]
    try:
        early = b.capture([scene()], seqs, size, (0.3, 0.6), seed=0, blocks=first_half)
        assert calls == [], "a block after the last captured one ran"
        full = b.capture([scene()], seqs, size, (0.3, 0.6), seed=0, blocks=first_half, early_exit=False)
        assert len(calls) == 2 * len(after)  # without early exit every block runs, per level
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(early.probs, full.probs)
    # nothing is left behind: the next full forward is the stock one
    assert not any(m._forward_hooks for m in b.transformer.modules())


def test_early_exit_keeps_the_grounder_maps(dirs):
    from grounding import Grounder

    g = Grounder.from_pretrained(dirs["flux"], device="cpu")
    blocks = tuple(g.backend.block_names[:2])
    img = scene(80, 60)
    a = g.attention_maps(img, "the red circle", blocks=blocks)
    g.backend.text_cache.clear()
    seq, size = g.tokens("the red circle").sequence, g.backend.input_size(80, 60, 64)
    args = ([img], [seq], size, g.config.timesteps, g.config.seed, g.config.guidance_scale, list(blocks))
    b = g.backend.capture(*args, early_exit=False)
    ref = g.backend.capture(*args)
    assert torch.equal(b.probs, ref.probs) and a.heatmap.shape == (60, 80)


def _count_encoder_calls(b):
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in b.text_encoders()]
    return calls, hooks


@pytest.mark.parametrize("arch", ["flux", "qwenimage", "zimage"])
def test_prompt_embeddings_are_cached(arch, dirs):
    b = load_backend(dirs[arch], memory=MemoryOptions(text_cache_size=8))
    calls, hooks = _count_encoder_calls(b)
    try:
        s1, s2 = _seq(b), _seq(b, "blue square")
        first = b.conditioning([s1])
        n = len(calls)
        assert n >= 1 and b.encoder_calls == 1
        again = b.conditioning([s1, s1, s1])  # cached, and one row for a repeated prompt
        assert len(calls) == n and b.encoder_calls == 1
        both = b.conditioning([s1, s2])
        assert b.encoder_calls == 2  # only the new prompt was encoded
        for k, v in first.items():
            if isinstance(v, torch.Tensor) and k not in b.cond_shared:
                assert torch.equal(again[k][0], v[0]) and torch.equal(both[k][0], v[0])
            elif isinstance(v, list):
                assert torch.equal(again[k][2], v[0])
        # same prompt, another max length: another call where what the encoder reads differs (FLUX
        # and Z-Image's encoder call pad to it); Qwen-Image encodes the prompt at its own length
        other = align("the red circle on the left", lambda p: b.tokenize([p], 64)[0], MagnetConfig()).sequence
        b.conditioning([other])
        differs = sequence_key(other) != sequence_key(s1)
        assert differs == (arch != "qwenimage") and b.encoder_calls == (3 if differs else 2)
        # the maps do not depend on whether the embeddings came from the cache
        size = b.input_size(64, 48, 64)
        cached = b.capture([scene()], [s1], size, (0.5,), seed=0)
        b.text_cache.clear()
        fresh = b.capture([scene()], [s1], size, (0.5,), seed=0)
        assert torch.equal(cached.probs, fresh.probs)
    finally:
        for h in hooks:
            h.remove()


def test_cache_size_zero_keeps_nothing(dirs):
    b = load_backend(dirs["flux"], memory=MemoryOptions(text_cache_size=0))
    s = _seq(b)
    b.conditioning([s])
    b.conditioning([s])
    assert b.encoder_calls == 2 and len(b.text_cache) == 0


def test_text_encoders_placed_apart_and_vae_decoder_dropped(dirs):
    b = load_backend(dirs["flux2"], memory=MemoryOptions(text_encoder_device="cpu"))
    assert b.text_device == torch.device("cpu")
    assert all(p.device.type == "cpu" for m in b.text_encoders() for p in m.parameters())
    assert not list(b.vae.decoder.parameters()) and list(b.vae.encoder.parameters())  # grounding never decodes
    with pytest.raises(RuntimeError, match="keep_vae_decoder"):
        b.vae.decoder(torch.zeros(1))
    kept = load_backend(dirs["flux2"], memory=MemoryOptions(keep_vae_decoder=True))
    assert list(kept.vae.decoder.parameters())
    before = sum(p.numel() for p in kept.vae.parameters())
    assert sum(p.numel() for p in b.vae.parameters()) < before
    # the embeddings come back on the model's device whatever the encoders' device
    cond = b.conditioning([_seq(b)])
    assert cond["embeds"].device == b.device


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(offload="disk"), "offload must be one of"),
        (dict(quantization="int4"), "quantization must be one of"),
        (dict(text_cache_size=-1), "text_cache_size"),
        (dict(offload="model", text_encoder_device="cpu"), "choose one"),
        (dict(text_encoder_device="nope"), "device"),
    ],
)
def test_memory_options_are_checked_when_built(bad, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        MemoryOptions(**bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a CPU-only machine gives")
@pytest.mark.parametrize(
    "opts",
    [
        dict(offload="model"),
        dict(offload="sequential"),
        dict(quantization="int8"),
        dict(quantization="nf4"),
        dict(quantization="fp8"),
        dict(text_offload=True),
    ],
)
def test_cuda_only_choices_fail_clearly_without_cuda(opts, dirs):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        load_backend(dirs["flux"], memory=MemoryOptions(**opts))


def test_quantization_builds_diffusers_pipeline_config():
    import importlib.util

    import diffusers
    import transformers

    comps = ["transformer", "text_encoder", "text_encoder_2", "vae", "tokenizer"]
    cfg = quantization_config("int8", comps, torch.bfloat16)
    m = cfg.quant_mapping
    assert cfg.is_granular and sorted(m) == ["text_encoder", "text_encoder_2", "transformer"]  # VAE left alone
    assert isinstance(m["transformer"], diffusers.BitsAndBytesConfig) and m["transformer"].load_in_8bit
    assert isinstance(m["text_encoder"], transformers.BitsAndBytesConfig) and m["text_encoder"].load_in_8bit
    wan22 = quantization_config("int8", ["transformer", "transformer_2", "text_encoder", "vae"], torch.bfloat16)
    assert isinstance(wan22.quant_mapping["transformer_2"], diffusers.BitsAndBytesConfig)  # both Wan 2.2 experts
    if importlib.util.find_spec("bitsandbytes") is None:  # diffusers' 4-bit config reads its version
        with pytest.raises(ValueError, match="needs the bitsandbytes package"):
            quantization_config("nf4", comps, torch.bfloat16)
    else:
        nf4 = quantization_config("nf4", comps, torch.bfloat16).quant_mapping["transformer"]
        assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_compute_dtype == torch.bfloat16
    if importlib.util.find_spec("torchao") is None:
        with pytest.raises(ValueError, match="needs the torchao package"):
            quantization_config("fp8", comps, torch.bfloat16)
    else:
        assert isinstance(
            quantization_config("fp8", comps, torch.bfloat16).quant_mapping["transformer"], diffusers.TorchAoConfig
        )


def test_cli_reports_a_cuda_only_choice(tmp_path, dirs, capsys):
    from grounding.cli import main

    scene().save(tmp_path / "img.png")
    code = main(
        [
            "segment",
            "--model",
            str(dirs["flux"]),
            str(tmp_path / "img.png"),
            "red circle",
            "--out",
            str(tmp_path / "o"),
            "--quantization",
            "int8",
        ]
    )
    assert code == 2 and "needs a CUDA device" in capsys.readouterr().err


def test_settings_build_memory_options():
    from grounding.serving.settings import load_settings

    s = load_settings({"GROUNDING_TEXT_ENCODER_DEVICE": "cpu", "GROUNDING_TEXT_CACHE_SIZE": "5"})
    m = s.memory()
    assert m.text_encoder_device == "cpu" and m.text_cache_size == 5 and m.offload is None
    with pytest.raises(ValueError, match="offload must be one of"):
        load_settings({"GROUNDING_OFFLOAD": "disk"}).memory()


def test_engine_batch_encodes_each_expression_once(dirs):
    """Assembled views run a second pass with the same prompts: no second encoder call."""
    from grounding import Grounder

    g = Grounder.from_pretrained(dirs["zimage"], device="cpu")
    g.backend.text_cache.clear()
    start = g.backend.encoder_calls
    g.segment(scene(80, 60), "the red circle", views="assembled")
    assert g.backend.encoder_calls == start + 1
    np.testing.assert_array_equal(
        g.segment(scene(80, 60), "the red circle", views="assembled").heatmap,
        g.segment(scene(80, 60), "the red circle", views="assembled").heatmap,
    )


def test_gpu_suite_runs_small_on_cpu():
    """``bench/gpu_suite.py --small`` runs the real-size script's code end to end, so it cannot rot."""
    from fixtures import run_bench

    doc = run_bench("bench/gpu_suite.py", "--small", "--device", "cpu", "--reps", "1")
    assert doc["bench"] == "gpu_suite" and doc["small"] is True
    for arch in ("flux", "zimage"):
        cap = doc[arch]["capture"]
        assert cap["output_identical"] is True and cap["capture_overhead"] > 0 and 0 < cap["early_exit_over_full"]
        assert doc[arch]["throughput"]["batched_over_unbatched"] > 0
    mem = doc["flux"]["memory_gib"]
    assert set(mem) >= {
        "all_on_device",
        "text_encoder_device=cpu",
        "offload=model",
        "offload=sequential",
        "quantization=int8",
        "quantization=nf4",
        "quantization=fp8",
    }
