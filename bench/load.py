"""Load benchmark: the real `bentoml serve` on 127.0.0.1, bounded requests at fixed concurrency.

Starts the service twice on a medium CPU model (4 dual + 4 single FLUX blocks, width 512): once
unbatched (GROUNDING_MAX_BATCH_SIZE=1) and once with adaptive batching, sends the same requests
to each, and prints p50/p95 latency, throughput and counts by status, then a final JSON line with
``batched_over_unbatched`` (throughput ratio). Loopback only; stops by itself.

    python bench/load.py [--requests 500] [--concurrency 16] [--batch 8] [--resolution 64]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_server import LocalServer  # noqa: E402


def test_image(seed: int) -> bytes:
    rng = np.random.RandomState(seed)
    arr = np.full((96, 128, 3), 220, dtype=np.uint8)
    x, y = rng.randint(10, 90), rng.randint(10, 60)
    arr[y : y + 24, x : x + 24] = (200, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def start(model: str, batch: int, latency_ms: int, resolution: int, log_path: Path) -> LocalServer:
    cfg = log_path.with_suffix(".yaml")
    cfg.write_text(f"max_batch_size: {batch}\nmax_latency_ms: {latency_ms}\ngrpc_port: 0\nengine_timeout_s: 20\n")
    return LocalServer(
        log_path.parent / log_path.stem, GROUNDING_MODEL=model, GROUNDING_CONFIG=str(cfg), GROUNDING_GRPC_PORT="0"
    )


async def load(url: str, n: int, concurrency: int, images: list[bytes]) -> dict:
    latencies: list[float] = []
    batch_sizes: list[float] = []
    statuses: Counter = Counter()
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient):
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t = time.perf_counter()
            try:
                r = await client.post(
                    url + "/segment",
                    files={"image": ("x.png", images[i % len(images)], "image/png")},
                    data={"expression": "the red square"},
                )
                statuses[str(r.status_code)] += 1
                if r.status_code == 200:
                    batch_sizes.append(r.json()["timings_ms"].get("batch_size", 1.0))
            except httpx.HTTPError as e:
                statuses[f"error:{type(e).__name__}"] += 1
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "requests": n,
        "wall_s": round(wall, 3),
        "throughput_rps": round(n / wall, 3),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1),
        "mean_batch": round(statistics.mean(batch_sizes), 2) if batch_sizes else None,
        "status": dict(statuses),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--latency-ms", type=int, default=10000)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--model", default=None, help="pipeline folder (default: a medium random FLUX in a temp dir)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="load-bench-"))
    model = args.model
    if model is None:
        from grounding.config import GroundingConfig
        from synthetic import save_tiny_model

        model = str(save_tiny_model(tmp / "medium", "flux", size="medium"))
        cfg = GroundingConfig.from_pretrained(model).replace(resolution=args.resolution)
        cfg.save_pretrained(model)
    images = [test_image(i) for i in range(32)]
    rows = {}
    for name, batch in (("unbatched", 1), ("batched", args.batch)):
        srv = start(model, batch, args.latency_ms, args.resolution, tmp / f"{name}.log")
        url = srv.url
        try:
            asyncio.run(load(url, min(16, args.requests), args.concurrency, images))  # warm-up
            rows[name] = asyncio.run(load(url, args.requests, args.concurrency, images))
        finally:
            srv.stop()
    print(
        f"medium FLUX (4 + 4 blocks, width 512) at {args.resolution} px, {args.requests} requests, "
        f"concurrency {args.concurrency}, CPU threads of one engine worker"
    )
    print(f"{'mode':<10} {'rps':>7} {'p50 ms':>8} {'p95 ms':>8} {'batch':>6}  status")
    for name, row in rows.items():
        print(
            f"{name:<10} {row['throughput_rps']:>7.2f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
            f"{row['mean_batch']:>6}  {row['status']}"
        )
    ratio = rows["batched"]["throughput_rps"] / rows["unbatched"]["throughput_rps"]
    errors = sum(v for k, v in rows["batched"]["status"].items() if k.startswith("error"))
    errors += sum(v for k, v in rows["unbatched"]["status"].items() if k.startswith("error"))
    print(
        json.dumps(
            {
                "bench": "load",
                "batched_over_unbatched": round(ratio, 3),
                "connection_errors": errors,
                "batch": args.batch,
                "resolution": args.resolution,
                **{k: v for k, v in rows.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
