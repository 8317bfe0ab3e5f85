"""Latency per request: masks from map prompts vs from region proposals the map chooses.

The shipped demo model on CPU, scenes of the shapes generator (seed 5) at the model's 64 px and
the same scenes upscaled (the DiT always reads them at its resolution, so the difference is the
proposer's cost, which grows with the image up to its 512 px working size). Median wall time of
``Grounder.segment`` per request after a warm-up (``timing.median_time``), each mode on the same
images in one run; a table, then one JSON line.

    python bench/proposals.py [--model models/shapes-demo] [--scenes 8] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from timing import median_time  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "shapes-demo"))
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sides", default="64,256,1024")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from eval.shapes import referring_scene
    from grounding import Grounder

    g = Grounder.from_pretrained(args.model, device="cpu")
    rng = np.random.RandomState(5)
    scenes = [referring_scene(rng, "attribute") for _ in range(args.scenes)]
    rows = []
    for side in [int(s) for s in args.sides.split(",")]:
        row: dict = {"side": side}
        for mode in ("none", "regions"):
            per = []
            proposer = []
            for scene, _, expr in scenes:
                image = scene.image.resize((side, side), Image.NEAREST)
                per.append(median_time(lambda: g.segment(image, expr, proposals=mode), args.reps))
                if mode == "regions":
                    proposer.append(g.segment(image, expr, proposals=mode).timings_ms.get("proposals", 0.0))
            row[f"{mode}_ms"] = 1000 * float(np.median(per))
            if proposer:
                row["proposer_ms"] = float(np.median(proposer))
        row["ratio"] = row["regions_ms"] / row["none_ms"]
        rows.append(row)
    print(f"{'image side':>10} | {'map prompts ms':>14} | {'regions ms':>10} | {'of which proposer':>17} | ratio")
    for r in rows:
        print(
            f"{r['side']:>10} | {r['none_ms']:>14.1f} | {r['regions_ms']:>10.1f} | {r['proposer_ms']:>17.1f} | "
            f"{r['ratio']:.2f}"
        )
    print(json.dumps({"bench": "proposals", "device": "cpu", "model": Path(args.model).name, "rows": rows}))


if __name__ == "__main__":
    main()
