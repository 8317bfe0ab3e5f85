"""Benchmark: a FLUX.1-size random-weight transformer (19 dual + 38 single blocks, 24 × 128,
bf16, 4096 image + 512 text tokens) forward with and without attention capture, on a GPU.

Prints a table and a final JSON line (``capture_overhead``, peak memory, whether the output
is bit-identical to the stock processors'). Smaller shapes run anywhere for a smoke test:

    python bench/gpu_flux_size.py                       # the FLUX size, needs ~30 GB of GPU memory
    python bench/gpu_flux_size.py --dual 1 --single 1 --side 16 --text 32 --device cpu --dtype float32
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention_capture import build, flux_store, inputs, modules  # noqa: E402
from grounding.backends.capture import dispatcher_capture  # noqa: E402
from real_size import built_on  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dual", type=int, default=19)
    ap.add_argument("--single", type=int, default=38)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--text", type=int, default=512)
    ap.add_argument("--captured-text", type=int, default=32, help="text columns kept (prompt tokens, not padding)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)

    with built_on(dev, dtype):
        model = build(3072, 24, args.dual, args.single, joint_dim=4096, pooled_dim=768)
    kw = inputs(args.side, args.text, 4096, 768, dev, dtype)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run(capture: bool):
        store = flux_store(args.text, torch.arange(args.captured_text))
        ctx = dispatcher_capture(modules(model), store) if capture else contextlib.nullcontext()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.perf_counter()
        with torch.no_grad(), ctx:
            out = model(**kw)[0]
        sync()
        dt = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else 0
        maps = sum(x.numel() * x.element_size() for v in store.maps.values() for x in v)
        return dt, peak, maps, out

    run(False), run(True)  # warm-up
    t = {False: [], True: []}
    res = {}
    for _ in range(args.reps):
        for cap in (False, True):
            dt, peak, maps, out = run(cap)
            t[cap].append(dt)
            res[cap] = (peak, maps, out)
    med = {k: statistics.median(v) for k, v in t.items()}
    same = torch.equal(res[False][2], res[True][2])
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"FLUX-size transformer: {args.dual} dual + {args.single} single blocks, 24 × 128, {args.dtype}, "
        f"{args.side**2} image + {args.text} text tokens on {dev_name}"
    )
    print(f"{'variant':<8} {'median s':>9} {'peak GiB':>9} {'maps MiB':>9}")
    for cap, name in ((False, "plain"), (True, "capture")):
        print(f"{name:<8} {med[cap]:>9.4f} {res[cap][0] / 2**30:>9.2f} {res[cap][1] / 2**20:>9.1f}")
    print(
        json.dumps(
            {
                "bench": "gpu_flux_size",
                "device": dev_name,
                "capture_overhead": round(med[True] / med[False], 4),
                "plain_s": round(med[False], 4),
                "capture_s": round(med[True], 4),
                "peak_gib_plain": round(res[False][0] / 2**30, 3),
                "peak_gib_capture": round(res[True][0] / 2**30, 3),
                "map_mib": round(res[True][1] / 2**20, 2),
                "output_identical": same,
            }
        )
    )


if __name__ == "__main__":
    main()
