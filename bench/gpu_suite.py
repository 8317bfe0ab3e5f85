"""The GPU check, in one script (≤ 8 minutes on one CUDA device): released models at released size,
random weights (``bench/real_size.py`` builds them from ``bench/released/*.json``).

For FLUX.1 [dev] (11.9 B transformer, T5-XXL and CLIP-L at full size) and Z-Image-Turbo (6.2 B,
Qwen3-4B), at 1024² (64 × 64 = 4096 image tokens):
  1. plain forward vs capture of every block: time, bit-identity of the output;
  2. early exit: capture of the first half of the blocks (forward stopped there) / capture of all;
  3. peak GPU memory of one capture per memory option — everything on the GPU, text encoders on the
     CPU, ``offload="model"``, ``offload="sequential"``, and int8 / nf4 / fp8 transformers where
     bitsandbytes / torchao are installed (through ``from_pretrained``, as ``MemoryOptions`` loads);
  4. engine throughput batched vs unbatched: 8 requests (one image, 8 expressions) through
     ``Grounder.segment_batch`` as one batch vs one at a time — the service's engine path, in process.
Prints a table and a final JSON line. ``--small`` runs the same code on tiny pipelines (CPU, seconds;
``make test`` runs it so it cannot rot). Random weights: the maps mean nothing, the costs are real.
``--dry-run`` walks every released model (or ``--archs``) at released size and resolution on the
``meta`` device (``real_size.walk``: no memory, no values, about a minute for all; ``make test``
runs it): the pipelines build, tokenize, encode and capture every block, and the early exit stops
where it should — so the GPU run fails on nothing but the GPU.

    python bench/gpu_suite.py                 # CUDA, real size
    python bench/gpu_suite.py --small --device cpu
    python bench/gpu_suite.py --dry-run       # every released model on the meta device
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import real_size  # noqa: E402
from grounding.backends import AttentionStore, backend_class  # noqa: E402
from synthetic import BUILDERS  # noqa: E402

# The suite's short names → the released models they stand for.
SUITE_MODELS = {"flux": "flux1-dev", "zimage": "z-image-turbo"}

GIB = 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    return round(torch.cuda.max_memory_allocated(device) / GIB, 2)


def build(arch: str, small: bool, device: torch.device, dtype: torch.dtype):
    """The backend of the released-size (or, ``small``, tiny) pipeline of ``arch``, built on ``device``."""
    if not small:
        pipe, _ = real_size.build_pipeline(SUITE_MODELS[arch], device, dtype)
    else:
        with real_size.built_on(device, dtype):
            pipe = BUILDERS[arch](0, "tiny")
    cls, _ = backend_class(type(pipe).__name__)
    return cls(pipe.to(device), device)


def inputs(b, side: int, text: int):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    px = side * b.patch
    image = Image.fromarray((torch.rand(px, px, 3, generator=g) * 255).to(torch.uint8).numpy())
    seq = b.tokenize(["the red circle on the left of the blue square, next to a tall tree"], text)[0]
    return image, seq, (px, px)


def timed(fn, device, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def capture_section(b, image, seq, size, reps: int) -> dict:
    device = b.device
    latents = b.encode_pixels([image], size)
    noisy = 0.7 * latents + 0.3 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(1)).to(latents)
    cond = b.conditioning([seq])
    rows, cols = b.grid(latents)
    columns = torch.from_numpy((seq.roles != 0).nonzero()[0])
    names = b.block_names

    def plain():
        with torch.no_grad():
            return b.forward(noisy, 0.5, cond, 3.5)

    def captured():
        store = AttentionStore(layout=lambda blk, q, k: b.layout(blk, q, k, len(seq), rows * cols), columns=columns)
        with torch.no_grad(), b.capturing(store, names):
            return b.forward(noisy, 0.5, cond, 3.5)

    reset_peak(device)
    t_plain, out_plain = timed(plain, device, reps)
    mem_plain = peak_gib(device)
    reset_peak(device)
    t_cap, out_cap = timed(captured, device, reps)
    mem_cap = peak_gib(device)
    half = names[: len(names) // 2]
    t_half, _ = timed(lambda: b.capture([image], [seq], size, (0.5,), 0, blocks=half), device, reps)
    t_all, _ = timed(lambda: b.capture([image], [seq], size, (0.5,), 0, blocks=names), device, reps)
    return {
        "blocks": len(names),
        "image_tokens": rows * cols,
        "text_tokens": len(seq),
        "plain_s": round(t_plain, 4),
        "capture_s": round(t_cap, 4),
        "capture_overhead": round(t_cap / t_plain, 4),
        "output_identical": bool(torch.equal(out_plain, out_cap)),
        "peak_gib_plain": mem_plain,
        "peak_gib_capture": mem_cap,
        "early_exit_over_full": round(t_half / t_all, 4),
    }


def free(device: torch.device) -> None:
    """Collect garbage and return cached GPU memory to the driver."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def one_capture_peak(b, image, seq, size, clear_cache: bool = True) -> float | None:
    """Peak GPU memory of one capture; ``clear_cache``: text encoding included."""
    if clear_cache:
        b.text_cache.clear()
    free(b.device)
    reset_peak(b.device)
    b.capture([image], [seq], size, (0.5,), 0)
    return peak_gib(b.device)


def memory_section(arch: str, small: bool, device: torch.device, dtype: torch.dtype, side: int, text: int) -> dict:
    """Peak GPU memory of one capture per memory option (a fresh pipeline for each placement)."""
    out: dict[str, object] = {}
    b = build(arch, small, device, dtype)
    image, seq, size = inputs(b, side, text)
    out["all_on_device"] = one_capture_peak(b, image, seq, size)
    for m in b.text_encoders():
        m.to("cpu")
    b.text_device = torch.device("cpu")
    # the encoders now run on the CPU and cannot touch GPU memory: the cached embedding stands in
    out["text_encoder_device=cpu"] = one_capture_peak(b, image, seq, size, clear_cache=False)
    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cuda" and (importlib.util.find_spec("bitsandbytes") or importlib.util.find_spec("torchao")):
            b.transformer.save_pretrained(tmp)
        del b
        free(device)
        for mode in ("model", "sequential"):
            if device.type != "cuda":
                out[f"offload={mode}"] = "skipped (needs CUDA)"
                continue
            b = build(arch, small, device, dtype)
            getattr(b.pipe, f"enable_{mode}_cpu_offload")(device=device)
            out[f"offload={mode}"] = one_capture_peak(b, image, seq, size)
            del b
            free(device)
        out.update(quantized_section(arch, small, device, dtype, tmp, image, seq, size))
    return out


def quantized_section(arch: str, small: bool, device, dtype, saved: str, image, seq, size) -> dict:
    """The saved transformer reloaded through diffusers' quantization configs (where installed),
    in a fresh pipeline whose other components stay on the GPU."""
    import diffusers

    configs = {}
    if importlib.util.find_spec("bitsandbytes"):
        configs["int8"] = lambda: diffusers.BitsAndBytesConfig(load_in_8bit=True)
        configs["nf4"] = lambda: diffusers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    if importlib.util.find_spec("torchao"):

        def fp8():
            from torchao.quantization import Float8WeightOnlyConfig

            return diffusers.TorchAoConfig(quant_type=Float8WeightOnlyConfig())

        configs["fp8"] = fp8
    if device.type != "cuda":
        return {f"quantization={k}": "skipped (needs CUDA)" for k in ("int8", "nf4", "fp8")}
    out = {
        f"quantization={k}": f"skipped ({'torchao' if k == 'fp8' else 'bitsandbytes'} not installed)"
        for k in ("int8", "nf4", "fp8")
        if k not in configs
    }
    if not configs:
        return out
    b = build(arch, small, device, dtype)
    cls = type(b.transformer)
    b.transformer = b.pipe.transformer = None
    free(device)
    for name, make in configs.items():
        try:
            q = cls.from_pretrained(saved, quantization_config=make(), torch_dtype=dtype).eval()
            if name == "fp8":
                q.to(device)
            b.transformer = b.pipe.transformer = q
            out[f"quantization={name}"] = one_capture_peak(b, image, seq, size)
        except Exception as e:  # report it and go on with the others
            out[f"quantization={name}"] = f"failed: {type(e).__name__}: {str(e)[:160]}"
        finally:
            b.transformer = b.pipe.transformer = None
            free(device)
    return out


def throughput_section(arch: str, small: bool, device: torch.device, dtype: torch.dtype, side: int) -> dict:
    from PIL import Image

    from grounding import Grounder
    from grounding.config import GroundingConfig

    b = build(arch, small, device, dtype)
    px = side * b.patch
    cfg = GroundingConfig(resolution=px, max_sequence_length=64 if arch == "flux" else 128, timesteps=(0.5,))
    g = Grounder(b, cfg, None, model_id=f"random-{arch}")
    img = Image.fromarray(
        (torch.rand(px, px, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8).numpy()
    )
    colours = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
    pairs = [(img, f"the {c} circle on the left") for c in colours]
    g.segment_batch(pairs[:2])  # warm-up (and the embeddings of two prompts)
    b.text_cache.clear()
    sync(device)
    t = time.perf_counter()
    for p in pairs:
        g.segment_batch([p])
    sync(device)
    one = time.perf_counter() - t
    b.text_cache.clear()
    t = time.perf_counter()
    g.segment_batch(pairs)
    sync(device)
    batched = time.perf_counter() - t
    return {
        "requests": len(pairs),
        "unbatched_req_s": round(len(pairs) / one, 3),
        "batched_req_s": round(len(pairs) / batched, 3),
        "batched_over_unbatched": round(one / batched, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="tiny pipelines (CPU smoke test)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--archs",
        default=None,
        help="flux,zimage (the default) or released model names; --dry-run: every released model by default",
    )
    ap.add_argument("--memory-archs", default="flux", help="archs whose memory options are measured")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: capture,memory,throughput")
    ap.add_argument("--dry-run", action="store_true", help="real size on the meta device: shapes, no values")
    args = ap.parse_args()
    if args.dry_run:
        return dry_run(args.archs)
    args.archs = args.archs or "flux,zimage"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; run with --small --device cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    side, text = (16, 32) if args.small else (64, 512)
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    result: dict = {
        "bench": "gpu_suite",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "small": args.small,
        "image_tokens": side * side,
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for arch in filter(None, args.archs.split(",")):
        row: dict = {}
        if "capture" not in skip:
            b = build(arch, args.small, device, dtype)
            image, seq, size = inputs(b, side, text if arch == "flux" else min(text, 512))
            row["capture"] = capture_section(b, image, seq, size, args.reps)
            del b
            free(device)
        if "memory" not in skip and arch in args.memory_archs.split(","):
            row["memory_gib"] = memory_section(arch, args.small, device, dtype, side, text)
        if "throughput" not in skip:
            row["throughput"] = throughput_section(arch, args.small, device, dtype, side)
        result[arch] = row
        c = row.get("capture", {})
        print(
            f"{arch}: plain {c.get('plain_s')} s, capture {c.get('capture_s')} s "
            f"(×{c.get('capture_overhead')}, identical {c.get('output_identical')}), "
            f"early exit / full {c.get('early_exit_over_full')}, peak {c.get('peak_gib_capture')} GiB"
        )
        for k, v in row.get("memory_gib", {}).items():
            print(f"  memory {k:<28} {v}")
        if "throughput" in row:
            t = row["throughput"]
            print(
                f"  engine throughput: {t['unbatched_req_s']} req/s one at a time, {t['batched_req_s']} batched "
                f"(×{t['batched_over_unbatched']})"
            )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


def dry_run(archs: str | None) -> None:
    """``real_size.walk`` of each released model (all when ``archs`` is None): table, then JSON."""
    started = time.perf_counter()
    names = [SUITE_MODELS.get(a, a) for a in archs.split(",")] if archs else real_size.released_names()
    result: dict = {"bench": "gpu_suite", "dry_run": True, "device": "meta", "dtype": "bfloat16", "models": {}}
    print(real_size.HEADER)
    for name in names:
        r = result["models"][name] = real_size.walk(name)
        print(real_size.row(r), flush=True)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
