"""Benchmark: the evaluation runner on a local Ray instance, 1 actor vs 2 (CPU).

A shapes set (``eval.shapes.write_refer``) through the shipped demo model, one CPU and one torch
thread per actor; throughput counts the samples over the time after the actors are up, and the
one-off start (Ray + every actor loading the model) is reported apart. Prints a table and a final
JSON line with ``ray_2_over_1``.

    python bench/ray_eval.py [--n 240] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.ray_runner import ModelSpec, RayOptions, run_ray  # noqa: E402
from eval.runner import RunConfig, read_results  # noqa: E402
from eval.shapes import write_refer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=240, help="shapes scenes")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--model", default=str(ROOT / "models" / "shapes-demo"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_refer(Path(tmp) / "data", args.n, seed=11)
        cfg = RunConfig(
            task="refcoco", data_root=str(Path(data).parent), dataset="shapes", split="val", model=args.model
        )
        rows = {}
        for actors in (1, 2):
            out = Path(tmp) / f"run{actors}"
            t = time.perf_counter()
            summary = run_ray(
                cfg,
                ModelSpec(model=args.model, device="cpu", threads=1),
                out,
                RayOptions(address="local", actors=actors, cpus_per_actor=1, batch_size=args.batch_size),
            )
            wall = time.perf_counter() - t
            info = json.loads((out / "ray.json").read_text())
            assert len(read_results(out / "results.jsonl")) == args.n
            rows[actors] = {**info, "wall_s": round(wall, 3), "miou": summary["miou"]}
    ratio = rows[2]["samples_per_s"] / rows[1]["samples_per_s"]
    print(f"shapes set, {args.n} scenes, demo model, 1 CPU / 1 thread per actor, batch {args.batch_size}")
    print(f"{'actors':>6} {'samples/s':>10} {'work s':>8} {'start s':>8} {'wall s':>8} {'mIoU':>7}")
    for a, r in rows.items():
        print(
            f"{a:>6} {r['samples_per_s']:>10.2f} {r['work_s']:>8.2f} {r['startup_s']:>8.2f} {r['wall_s']:>8.2f} "
            f"{r['miou']:>7.4f}"
        )
    print(
        json.dumps(
            {
                "bench": "ray_eval",
                "n": args.n,
                "ray_2_over_1": round(ratio, 4),
                "samples_per_s": {str(a): r["samples_per_s"] for a, r in rows.items()},
                "startup_s": {str(a): r["startup_s"] for a, r in rows.items()},
                "same_miou": rows[1]["miou"] == rows[2]["miou"],
            }
        )
    )


if __name__ == "__main__":
    main()
