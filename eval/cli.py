"""``python -m eval``: refcoco, grefcoco, davis, ytvos, mevis, vizwiz runs; merge shards; make-shapes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .runner import RunConfig, merge, parse_shard, run_answers, run_local, run_refcoco, run_video


def _common(p: argparse.ArgumentParser) -> None:
    from grounding.backends.zoo import default_model

    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default=None)
    p.add_argument("--model", default=default_model(), help="hub id, pipeline folder or zoo name")
    p.add_argument(
        "--segmenter",
        default=os.environ.get("GROUNDING_SEGMENTER", ""),
        help="SAM checkpoint; empty = map-threshold masks",
    )
    p.add_argument("--device", default=os.environ.get("GROUNDING_DEVICE"))
    p.add_argument("--dtype", default=os.environ.get("GROUNDING_DTYPE"))
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="i/n: every n-th sample from i")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="grounding config override")
    p.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: as torch chooses; on Ray: the actor's CPUs)"
    )
    r = p.add_argument_group("Ray (a pool of actors that hold the model)")
    r.add_argument(
        "--ray",
        default=None,
        metavar="local|auto|ADDRESS",
        help="local: start Ray on this machine; auto / ADDRESS: join a running cluster",
    )
    r.add_argument("--actors", type=int, default=2)
    r.add_argument("--gpus-per-actor", type=float, default=0.0)
    r.add_argument("--cpus-per-actor", type=float, default=1.0)
    r.add_argument("--batch-size", type=int, default=4, help="samples per task")


def main(argv: list[str] | None = None) -> int:
    from grounding.cli import parse_overrides as _overrides

    ap = argparse.ArgumentParser(prog="python -m eval", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("refcoco", help="RefCOCO / RefCOCO+ / RefCOCOg (refer layout)")
    _common(p)
    p.add_argument("--dataset", default="refcoco")
    p.add_argument("--split-by", default=None)
    p.add_argument(
        "--image-root", default=None, help="COCO train2014 images (default: <data-root>/images/mscoco/images/train2014)"
    )
    p.add_argument("--save-overlays", type=int, default=0, metavar="K", help="overlays of K best, worst, random")
    p = sub.add_parser(
        "grefcoco", help="gRefCOCO: multi-, single- and no-target expressions (gIoU, cIoU, N-acc, T-acc)"
    )
    _common(p)
    p.add_argument("--dataset", default="grefcoco")
    p.add_argument("--split-by", default="unc")
    p.add_argument("--image-root", default=None, help="COCO train2014 images (default: <data-root>/images/train2014)")
    for name, default_split, what in (
        ("davis", "val", "Ref-DAVIS17"),
        ("ytvos", "valid", "Ref-YouTube-VOS"),
        ("mevis", "valid_u", "MeViS"),
    ):
        p = sub.add_parser(name, help=what)
        _common(p)
        p.add_argument(
            "--maps",
            choices=["frame", "clip"],
            default="frame",
            help="frame: the model over each frame; clip: a video DiT (Wan, HunyuanVideo) over windows of frames",
        )
        p.add_argument(
            "--propagate",
            action="store_true",
            help="maps at keyframes only, the SAM 2-family --segmenter's video memory carrying the mask between them",
        )
        p.add_argument("--keyframe-every", type=int, default=8, help="--propagate: a map at least every N frames")
        p.set_defaults(default_split=default_split)
    p = sub.add_parser("vizwiz", help="answer grounding, VizWiz-VQA-Grounding layout (mask IoU)")
    _common(p)
    p = sub.add_parser("make-shapes", help="write the synthetic shapes referring world in the refer format")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split", default="val")
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (the demo model's resolution)")
    p.add_argument(
        "--generalized",
        action="store_true",
        help="several targets or none per expression (dataset name grefcoco unless --dataset)",
    )
    p.add_argument(
        "--layout",
        choices=["grefcoco", "refer"],
        default="grefcoco",
        help="with --generalized: grefs(unc).json (gRefCOCO's release) or refs(unc).p (the refer "
        "API's pickle, the same refs with ann_id lists); python -m eval grefcoco reads both",
    )
    p.add_argument(
        "--generator",
        choices=["a", "b"],
        default="a",
        help="a: the world the demo model was trained and calibrated on (eval.shapes); b: the second, "
        "independent world (eval.shapes_b), written in gRefCOCO's layout — choose its --set",
    )
    p.add_argument(
        "--set",
        dest="kind_set",
        choices=["presence", "discrimination", "generalized"],
        default="generalized",
        help="with --generator b: which set (dataset name shapes-b-<set>-<size> unless --dataset)",
    )
    p = sub.add_parser("merge", help="merge shard run directories")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    try:
        if args.cmd == "make-shapes":
            from .shapes import write_grefcoco, write_refer

            if args.generator == "b":
                from .shapes_b import write

                name = None if args.dataset == "shapes" else args.dataset
                folder = write(args.out, args.kind_set, args.n, args.seed, args.size, args.split, name)
            elif args.generalized:
                name = "grefcoco" if args.dataset == "shapes" else args.dataset
                folder = write_grefcoco(args.out, args.n, args.seed, args.split, name, args.size, args.layout)
            else:
                folder = write_refer(args.out, args.n, args.seed, args.split, args.dataset, args.size)
            print(json.dumps({"written": str(folder), "n": args.n, "split": args.split}))
            return 0
        if args.cmd == "merge":
            print(json.dumps(merge([Path(r) for r in args.runs], Path(args.out))))
            return 0
        from grounding import Grounder

        overrides = _overrides(args.set)
        split = args.split or ("val" if args.cmd in ("refcoco", "vizwiz", "grefcoco") else args.default_split)
        cfg = RunConfig(
            task=args.cmd,
            data_root=str(args.data_root),
            dataset=getattr(args, "dataset", args.cmd),
            split=split,
            model=str(args.model),
            segmenter=args.segmenter or "",
            split_by=getattr(args, "split_by", None),
            image_root=getattr(args, "image_root", None),
            limit=args.limit,
            shard=args.shard,
            overrides=overrides,
            video_maps=getattr(args, "maps", "frame"),
            propagate=getattr(args, "propagate", False),
            keyframe_every=getattr(args, "keyframe_every", 8),
        )
        if args.ray:
            from .ray_runner import ModelSpec, RayOptions, run_ray

            opts = RayOptions(
                address=args.ray,
                actors=args.actors,
                gpus_per_actor=args.gpus_per_actor,
                cpus_per_actor=args.cpus_per_actor,
                batch_size=args.batch_size,
            )
            spec = ModelSpec(
                model=str(args.model),
                segmenter=args.segmenter or "",
                device=args.device,
                dtype=args.dtype,
                threads=args.threads,
            )
            summary = run_ray(cfg, spec, Path(args.out), opts)
            print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
            return 0
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        g = Grounder.from_pretrained(args.model, segmenter=args.segmenter or None, device=args.device, dtype=args.dtype)
        if cfg.propagate:
            from grounding.pipeline.propagate import require_tracker

            require_tracker(g)  # a segmenter without a video model fails before the first video
        if args.cmd == "vizwiz":
            summary = run_answers(cfg, g, Path(args.out))
        elif args.cmd == "refcoco":
            summary = run_refcoco(cfg, g, Path(args.out), args.save_overlays)
        elif args.cmd == "grefcoco":
            summary = run_local(cfg, g, Path(args.out))
        else:
            summary = run_video(cfg, g, Path(args.out))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0
