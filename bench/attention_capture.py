"""Benchmark: attention capture cost on medium random transformers (CPU).

Plain forward (stock processors) vs. our capture (fused SDPA + log-sum-exp, image→text slice
only) vs. a naive capture that materialises softmax(QKᵀ) for every block. First a medium FLUX.1
transformer on raw inputs, then one row per backbone — FLUX.2 [dev], FLUX.2 [klein], Qwen-Image,
Z-Image — each a medium random pipeline (width 512 = 4 heads × 128) driven through its backend
(real tokenizer, template and conditioning). Prints tables and a final JSON line with
``capture_overhead`` (time ratio ours / plain), ``map_memory_ratio`` (bytes of our stored maps /
bytes of the naive per-block attention matrices), ``backbones: {name: {...}}`` and
``early_exit_over_full`` (capture of the first half of the blocks, the forward stopped after
them, over capture of all blocks, on a medium FLUX pipeline).

    python bench/attention_capture.py [--reps 3] [--image-side 64] [--text 128] [--backbones all|none|a,b]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grounding.backends.capture import AttentionStore, SequenceLayout, dispatcher_capture  # noqa: E402


class NaiveRecorder:
    """The obvious way: build P = softmax(QKᵀ/√d) [B, H, S, S], output P·V, keep the full P."""

    def __init__(self):
        self.maps = {}

    def attend(self, block, q, k, v, attn_mask=None, scale=None):
        p = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / q.shape[-1] ** 0.5, dim=-1)
        self.maps.setdefault(block, []).append(p)
        return torch.matmul(p, v)


def modules(model) -> dict:
    """Block name → attention module, for every dual- and single-stream block."""
    return {
        f"{lst}.{i}": b.attn
        for lst in ("transformer_blocks", "single_transformer_blocks")
        for i, b in enumerate(getattr(model, lst))
    }


def flux_store(text: int, columns: torch.Tensor) -> AttentionStore:
    """The engine's recorder for FLUX's layout (text first, then image)."""
    return AttentionStore(
        layout=lambda block, q, k: SequenceLayout(image=slice(text, q), text=slice(0, text)), columns=columns
    )


def build(width: int, heads: int, dual: int, single: int, joint_dim: int = 256, pooled_dim: int = 128):
    """A randomly initialised FluxTransformer2DModel (in the current default device and dtype)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    head_dim = width // heads
    axes = (
        (head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16)
        if head_dim == 128
        else (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    )
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=dual,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_dim,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=False,
        axes_dims_rope=axes,
    ).eval()


def inputs(side: int, text: int, joint_dim: int = 256, pooled_dim: int = 128, device="cpu", dtype=torch.float32):
    """Random transformer inputs for ``side × side`` image tokens and ``text`` text tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    kw = dict(
        hidden_states=torch.randn(1, side * side, 64, generator=g),
        encoder_hidden_states=torch.randn(1, text, joint_dim, generator=g),
        pooled_projections=torch.randn(1, pooled_dim, generator=g),
        timestep=torch.tensor([0.3]),
        img_ids=ids.reshape(-1, 3),
        txt_ids=torch.zeros(text, 3),
    )
    kw = {k: v.to(device, dtype if k not in ("img_ids", "txt_ids") else v.dtype) for k, v in kw.items()}
    return dict(kw, return_dict=False)


BACKBONES = ("flux2", "flux2-klein", "qwenimage", "zimage")


def timed(model_call, names, make_store, reps: int, modules_of) -> dict:
    """Interleaved plain / ours / naive forwards: medians, map bytes, output identity."""

    def run(variant: str):
        store = make_store() if variant == "ours" else NaiveRecorder()
        capture = dispatcher_capture(modules_of(names), store) if variant != "plain" else contextlib.nullcontext()
        t = time.perf_counter()
        with torch.no_grad(), capture:
            out = model_call()
        dt = time.perf_counter() - t
        nbytes = sum(x.numel() * x.element_size() for v in store.maps.values() for x in v)
        return dt, nbytes, out

    variants = ["plain", "ours", "naive"]
    run("plain")  # warm-up
    times = {v: [] for v in variants}
    mem, outs = {}, {}
    for _ in range(reps):  # interleaved so drift hits every variant alike
        for v in variants:
            dt, nbytes, out = run(v)
            times[v].append(dt)
            mem[v], outs[v] = nbytes, out
    med = {v: statistics.median(times[v]) for v in variants}
    return {"median": med, "mem": mem, "same": torch.equal(outs["plain"], outs["ours"])}


def backbone_row(arch: str, side: int, text: int, reps: int) -> dict:
    """One backbone: a medium random pipeline, a ``side × side``-token image, a prompt padded (FLUX.2)
    or cut to about ``text`` tokens, through the backend's own tokenize / encode / forward."""
    from PIL import Image

    from grounding.backends import AttentionStore, backend_class
    from synthetic import BUILDERS

    pipe = BUILDERS[arch](0, "medium")
    cls, _ = backend_class(type(pipe).__name__)
    b = cls(pipe.to("cpu"), "cpu")
    px = side * b.patch
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(px, px, 3, generator=g) * 255).to(torch.uint8).numpy())
    prompt = " ".join(["the red circle on the left of the blue square"] * 12)
    seq = b.tokenize([" ".join(prompt.split()[: text // 2])], text)[0]
    latents = b.encode_pixels([image], (px, px))
    noisy = 0.7 * latents + 0.3 * torch.randn(latents.shape, generator=g)
    cond = b.encode_prompts([seq])
    rows, cols = b.grid(latents)
    columns = torch.from_numpy((seq.roles != 0).nonzero()[0])
    text_len = len(seq)
    res = timed(
        lambda: b.forward(noisy, 0.3, cond, 1.0),
        b.block_names,
        lambda: AttentionStore(layout=lambda blk, q, k: b.layout(blk, q, k, text_len, rows * cols), columns=columns),
        reps,
        lambda names: {n: b.attention_module(n) for n in names},
    )
    med, mem = res["median"], res["mem"]
    return {
        "arch": arch,
        "pipeline": type(pipe).__name__,
        "blocks": len(b.block_names),
        "image_tokens": rows * cols,
        "text_tokens": text_len,
        "captured_columns": len(columns),
        "plain_s": round(med["plain"], 4),
        "capture_overhead": round(med["ours"] / med["plain"], 4),
        "naive_overhead": round(med["naive"] / med["plain"], 4),
        "map_memory_ratio": round(mem["ours"] / mem["naive"], 4),
        "ours_map_bytes": mem["ours"],
        "naive_map_bytes": mem["naive"],
        "output_identical": res["same"],
    }


def early_exit_row(side: int, text: int, reps: int) -> dict:
    """``DiTBackend.capture`` on a medium random FLUX pipeline: the first half of the blocks
    captured (the forward stops after them) vs all blocks captured; same image, prompt, levels."""
    from PIL import Image

    from grounding.backends import FluxBackend
    from synthetic import BUILDERS

    b = FluxBackend(BUILDERS["flux"](0, "medium"), "cpu")
    px = side * b.patch
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(px, px, 3, generator=g) * 255).to(torch.uint8).numpy())
    seq = b.tokenize(["the red circle on the left of the blue square"], text)[0]
    names = b.block_names
    half = names[: len(names) // 2]

    def run(blocks, early):
        t = time.perf_counter()
        cap = b.capture([image], [seq], (px, px), (0.5,), seed=0, blocks=blocks, early_exit=early)
        return time.perf_counter() - t, cap

    run(names, True)  # warm-up (and the prompt's embedding enters the cache)
    times = {"half": [], "all": [], "half_full_forward": []}
    for _ in range(reps):
        dt, early = run(half, True)
        times["half"].append(dt)
        dt, _ = run(names, True)
        times["all"].append(dt)
        dt, late = run(half, False)
        times["half_full_forward"].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "blocks": len(names),
        "captured": len(half),
        "half_s": round(med["half"], 4),
        "all_s": round(med["all"], 4),
        "half_without_early_exit_s": round(med["half_full_forward"], 4),
        "early_exit_over_full": round(med["half"] / med["all"], 4),
        "identical_maps": bool(torch.equal(early.probs, late.probs)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--image-side", type=int, default=64, help="image tokens per side (64 → 4096)")
    ap.add_argument("--text", type=int, default=128)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    ap.add_argument("--backbones", default="all", help="all, none, or a comma list of " + ",".join(BACKBONES))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build(args.width, args.heads, 4, 4)
    kw = inputs(args.image_side, args.text)
    columns = torch.arange(args.text)
    res = timed(
        lambda: model(**kw)[0], None, lambda: flux_store(args.text, columns), args.reps, lambda _names: modules(model)
    )
    med, mem, same = res["median"], res["mem"], res["same"]

    n_img = args.image_side**2
    print(
        f"medium FLUX: 4 dual + 4 single blocks, width {args.width} ({args.heads} heads), "
        f"{n_img} image + {args.text} text tokens, threads={torch.get_num_threads()}, reps={args.reps}"
    )
    print(f"{'variant':<8} {'median s':>9} {'× plain':>8} {'maps MB':>9}")
    for v in ("plain", "ours", "naive"):
        print(f"{v:<8} {med[v]:>9.3f} {med[v] / med['plain']:>8.3f} {mem[v] / 2**20:>9.1f}")
    print(f"output identical to stock: {same}")

    chosen = (
        BACKBONES
        if args.backbones == "all"
        else ()
        if args.backbones == "none"
        else tuple(a.strip() for a in args.backbones.split(","))
    )
    rows = [backbone_row(a, args.image_side, args.text, args.reps) for a in chosen]
    if rows:
        print(f"\nper backbone (medium random pipelines, width 512, {n_img} image tokens, reps={args.reps}):")
        print(
            f"{'backbone':<12} {'blocks':>6} {'text':>5} {'cols':>5} {'plain s':>8} {'× plain':>8} "
            f"{'naive ×':>8} {'map mem':>8} {'same':>5}"
        )
        for r in rows:
            print(
                f"{r['arch']:<12} {r['blocks']:>6} {r['text_tokens']:>5} {r['captured_columns']:>5} "
                f"{r['plain_s']:>8.3f} {r['capture_overhead']:>8.3f} {r['naive_overhead']:>8.3f} "
                f"{r['map_memory_ratio']:>8.4f} {str(r['output_identical']):>5}"
            )
    within = all(r["capture_overhead"] <= 1.10 and r["map_memory_ratio"] <= 0.05 for r in rows)
    ee = early_exit_row(args.image_side, args.text, args.reps)
    print(
        f"\nearly exit (medium FLUX pipeline, {ee['blocks']} blocks): capture first {ee['captured']} "
        f"{ee['half_s']:.3f} s (without early exit {ee['half_without_early_exit_s']:.3f} s) vs all "
        f"{ee['all_s']:.3f} s: early_exit_over_full {ee['early_exit_over_full']:.3f}, "
        f"identical maps: {ee['identical_maps']}"
    )
    print(
        json.dumps(
            {
                "bench": "attention_capture",
                "capture_overhead": round(med["ours"] / med["plain"], 4),
                "naive_overhead": round(med["naive"] / med["plain"], 4),
                "map_memory_ratio": round(mem["ours"] / mem["naive"], 4),
                "ours_map_bytes": mem["ours"],
                "naive_map_bytes": mem["naive"],
                "plain_s": round(med["plain"], 4),
                "output_identical": same,
                "image_tokens": n_img,
                "text_tokens": args.text,
                "reps": args.reps,
                "backbones": {r["arch"]: {k: v for k, v in r.items() if k != "arch"} for r in rows},
                "backbones_within_targets": within,
                "early_exit_over_full": ee["early_exit_over_full"],
                "early_exit": ee,
            }
        )
    )


if __name__ == "__main__":
    main()
