"""Ablation of the RefAM components on the shapes world, with the project's own runner.

    python -m eval make-shapes --out /tmp/shapes_val --n 500 --seed 1   # 64 px, the demo model's size
    python bench/shapes_ablation.py --data-root /tmp/shapes_val [--model shapes-demo] [--limit 500]

Runs ``python -m eval refcoco --dataset shapes`` once per configuration (each in its own run
directory under ``--runs``, so an interrupted ablation resumes), then prints a table of pointing
and mIoU and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_RAW = "refine.enabled=false"  # rows before "+ refinement" threshold the plain upsampled map
CONFIGS = {
    "baseline": ["magnets.enabled=false", "sinks.enabled=false", "redistribution.enabled=false", _RAW],
    "+ magnets": ["sinks.enabled=false", "redistribution.enabled=false", _RAW],
    "+ sink handling": ["redistribution.enabled=false", _RAW],
    "+ redistribution (RefAM)": [_RAW],
    "+ refinement (full)": ["refine.enabled=true"],
    "+ assembled views": ["refine.enabled=true", "views.mode=assembled"],
}


def main() -> None:
    from eval.cli import main as eval_main

    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--model", default="shapes-demo")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--runs", default="runs/shapes-ablation")
    args = ap.parse_args()
    rows = {}
    for name, sets in CONFIGS.items():
        out = Path(args.runs) / name.replace(" ", "_").replace("+", "plus").replace("(", "").replace(")", "")
        argv = [
            "refcoco",
            "--data-root",
            args.data_root,
            "--dataset",
            "shapes",
            "--model",
            args.model,
            "--out",
            str(out),
        ]
        for s in sets:
            argv += ["--set", s]
        if args.limit:
            argv += ["--limit", str(args.limit)]
        if eval_main(argv) != 0:
            raise SystemExit(f"run {name} failed")
        rows[name] = json.loads((out / "summary.json").read_text())
    print(f"{'configuration':<26} {'pointing':>9} {'mIoU':>7} {'oIoU':>7} {'n':>5}")
    for name, r in rows.items():
        print(f"{name:<26} {r['pointing']:>9.3f} {r['miou']:>7.3f} {r['oiou']:>7.3f} {r['n']:>5}")
    print(
        json.dumps(
            {
                "bench": "shapes_ablation",
                "model": args.model,
                **{
                    name: {"pointing": round(r["pointing"], 4), "miou": round(r["miou"], 4)} for name, r in rows.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
