"""``python -m training``: calibrate, calibrate-presence, calibrate-instances, train-answer-head, train-demo — the
fitting and training commands, outside the inference package."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grounding.cli import add_model_args, grounder_from_args, run_command


def _output_folder(args) -> Path:
    """``--out``, or the model's own folder when ``--model`` is a local pipeline folder."""
    from grounding.backends.zoo import resolve

    out = Path(args.out or resolve(args.model))
    if not args.out and not (out / "model_index.json").is_file():
        raise ValueError("--out is needed when --model is not a local pipeline folder")
    return out


def _write_config(fitted, out: Path, report: dict, what: str) -> int:
    """Save a fitted ``grounding.json`` into ``out`` (its model card saying ``what`` was fitted on
    what) and print the report with its path."""
    out.mkdir(parents=True, exist_ok=True)
    card = fitted.card
    fitted = fitted.replace(**{"card.calibrated": True, "card.calibration": [*card.calibration, what]})
    fitted.save_pretrained(out)
    report["written"] = str(out / "grounding.json")
    print(json.dumps(report))
    return 0


def cmd_calibrate(args) -> int:
    from eval.refcoco import RefDataset

    from .calibrate import collect, fit, fit_masks

    out = _output_folder(args)
    g = grounder_from_args(args)
    ds = RefDataset(args.data, args.dataset, args.split_by, args.split, args.image_root)
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    samples = [(s.image_path, s.sentence, s.mask) for s in (ds[i] for i in range(n))]
    levels = tuple(sorted(set(args.timesteps) | set(g.config.timesteps)))
    fitted, report = fit(collect(g, samples, levels), g.config)
    if args.masks:
        fitted, report["masks"] = fit_masks(g, samples, fitted)
    return _write_config(
        fitted, out, report, f"python -m training calibrate on {n} {args.dataset} samples of {args.data} ({args.split})"
    )


def cmd_calibrate_presence(args) -> int:
    from eval.shapes import presence_scenes

    from .calibrate import fit_agreement, fit_presence

    out = _output_folder(args)
    g = grounder_from_args(args)
    samples = presence_scenes(args.n, args.seed, g.config.resolution)
    if args.rule == "agreement":
        blocks = tuple(b for b in args.word_blocks.split(",") if b) if args.word_blocks else None
        fitted, report = fit_agreement(g, samples, blocks)
        how = f" --rule agreement{' --word-blocks ' + args.word_blocks if blocks else ''}"
    else:
        fitted, report = fit_presence(g, samples)
        how = ""
    return _write_config(
        fitted,
        out,
        report,
        f"python -m training calibrate-presence{how} on {args.n} generated shapes scenes (seed {args.seed})",
    )


def cmd_calibrate_instances(args) -> int:
    from eval.grefcoco import GRefDataset

    from .calibrate import fit_instances

    out = _output_folder(args)
    g = grounder_from_args(args)
    ds = GRefDataset(args.data, args.split, args.image_root, args.dataset)
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    samples = [(s.image_path, s.sentence, s.mask, s.no_target) for s in (ds[i] for i in range(n))]
    fitted, report = fit_instances(g, samples, min_t_acc=args.min_t_acc)
    return _write_config(
        fitted,
        out,
        report,
        f"python -m training calibrate-instances on {n} samples of "
        f"{args.data} ({args.split}, --min-t-acc {args.min_t_acc})",
    )


def cmd_train_answer_head(args) -> int:
    from eval.answers import VizWizGrounding
    from grounding.readout.answers import answer_prompt

    from .answer_head import train

    out = _output_folder(args)
    g = grounder_from_args(args)
    ds = VizWizGrounding(args.data, args.split)
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    samples = [(s.image_path, answer_prompt(s.question, s.answer), s.mask) for s in (ds[i] for i in range(n))]
    head, report = train(g, samples, epochs=args.epochs, lr=args.lr, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    report["written"] = str(head.save_pretrained(out, **head.meta))
    print(json.dumps(report))
    return 0


def cmd_train_demo(args) -> int:
    import logging

    from .demo import DemoConfig, export_weights, train_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.from_weights:
        print(json.dumps({"out": str(export_weights(args.from_weights, args.out))}))
        return 0
    cfg = DemoConfig(
        steps=args.steps,
        vae_steps=args.vae_steps,
        batch=args.batch,
        seed=args.seed,
        size=args.size,
        dual_blocks=args.dual_blocks,
        single_blocks=args.single_blocks,
        width_heads=args.heads,
        head_dim=args.head_dim,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        minutes=args.minutes,
        grounding_loss=args.grounding_loss,
        refer_steps=args.refer_steps,
        referring=args.referring,
    )
    path = train_demo(args.out, cfg, weights_only=args.weights_only)
    print(json.dumps({"out": str(path)}))
    return 0


def _sides(text: str) -> tuple[int, ...]:
    """``"96,128"`` → (96, 128); each side a positive multiple of 4 (the demo's VAE and packing)."""
    try:
        sides = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    bad = [x for x in sides if x <= 0 or x % 4]
    if bad:
        raise argparse.ArgumentTypeError(f"image sides must be positive multiples of 4, got {bad}")
    return sides


def cmd_finetune_demo(args) -> int:
    import logging

    from grounding.backends.zoo import resolve

    from .demo import DemoConfig, finetune_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = DemoConfig(
        batch=args.batch,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        refer_steps=args.steps,
        refer_lr=args.lr,
        referring=args.referring,
        word_targets=args.word_targets,
        generalized=args.generalized,
        more_sizes=tuple(args.more_sizes),
        magnet_captions=args.magnet_captions,
        varied=args.varied,
    )
    print(json.dumps({"out": str(finetune_demo(resolve(args.model), args.out, cfg))}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .demo import DemoConfig

    ap = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser(
        "calibrate", help="fit noise levels and block/head weights on a refer-format set; writes grounding.json"
    )
    add_model_args(p)
    p.add_argument("--data", required=True, help="refer-layout data root")
    p.add_argument("--dataset", default="refcoco")
    p.add_argument("--split-by", default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--image-root", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument(
        "--timesteps",
        type=lambda s: [float(v) for v in s.split(",")],
        default=[0.15, 0.3, 0.5],
        help="candidate noise levels, comma-separated (the current ones are always included)",
    )
    p.add_argument(
        "--no-masks",
        dest="masks",
        action="store_false",
        help="keep the map threshold and refinement (default: fit them for map-threshold mask IoU)",
    )
    p.add_argument("--out", default=None, help="folder for grounding.json (default: the model folder)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "calibrate-presence",
        help="fit the 'referent not in the image' model on generated shapes scenes with and without the named object",
    )
    add_model_args(p)
    p.add_argument("--n", type=int, default=300, help="scenes (half without the referent)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument(
        "--rule",
        choices=("model", "agreement"),
        default="model",
        help="model: fit the logistic presence model; agreement: only the word-agreement threshold "
        "(present where the expression's attribute words light one region)",
    )
    p.add_argument(
        "--word-blocks",
        default=None,
        help="with --rule agreement: comma-separated blocks the word maps pool (default: the captured blocks)",
    )
    p.add_argument("--out", default=None, help="folder for grounding.json (default: the model folder)")
    p.set_defaults(func=cmd_calibrate_presence)

    p = sub.add_parser(
        "calibrate-instances",
        help="fit the presence model and instances.min_relative_peak "
        "for generalized referring on a gRefCOCO-layout set "
        "(e.g. make-shapes --generalized)",
    )
    add_model_args(p)
    p.add_argument("--data", required=True, help="root holding <dataset>/grefs(unc).json + instances.json")
    p.add_argument("--dataset", default="grefcoco")
    p.add_argument("--split", default="val")
    p.add_argument("--image-root", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument(
        "--min-t-acc",
        type=float,
        default=0.9,
        help="only presence thresholds that keep at least this share of the target samples non-empty (T-acc)",
    )
    p.add_argument("--out", default=None, help="folder for grounding.json (default: the model folder)")
    p.set_defaults(func=cmd_calibrate_instances)

    p = sub.add_parser(
        "train-answer-head",
        help="train the sentence-attention answer head on a "
        "VizWiz-VQA-Grounding-layout set; writes answer_head.safetensors",
    )
    add_model_args(p)
    p.add_argument("--data", required=True, help="root with <split>_grounding.json and <split>/ images")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the head (default: the model folder)")
    p.set_defaults(func=cmd_train_answer_head)

    p = sub.add_parser("train-demo", help="train (or resume) the shapes demo model; checkpoints in OUT/train")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=DemoConfig.steps)
    p.add_argument("--vae-steps", type=int, default=DemoConfig.vae_steps)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=DemoConfig.size, help="image side in pixels")
    p.add_argument("--dual-blocks", type=int, default=DemoConfig.dual_blocks)
    p.add_argument("--single-blocks", type=int, default=DemoConfig.single_blocks)
    p.add_argument("--heads", type=int, default=DemoConfig.width_heads)
    p.add_argument("--head-dim", type=int, default=DemoConfig.head_dim)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--workers", type=int, default=0, help="processes rendering training scenes")
    p.add_argument(
        "--minutes", type=float, default=0.0, help="time budget for stage 2; --steps becomes the most it may run"
    )
    p.add_argument(
        "--grounding-loss",
        type=float,
        default=DemoConfig.grounding_loss,
        help="weight of the token grounding loss (0 = flow matching alone)",
    )
    p.add_argument(
        "--refer-steps",
        type=int,
        default=DemoConfig.refer_steps,
        help="stage 3: referring fine-tune steps after the caption steps (0 = none)",
    )
    p.add_argument(
        "--referring",
        type=float,
        default=DemoConfig.referring,
        help="stage 3: share of each batch that are referring examples",
    )
    p.add_argument("--weights-only", action="store_true", help="write OUT/weights.pt (fp16) instead of a pipeline")
    p.add_argument("--from-weights", default=None, help="turn a weights.pt into a pipeline folder at OUT; no training")
    p.set_defaults(func=cmd_train_demo)

    p = sub.add_parser(
        "finetune-demo", help="referring fine-tune of a saved demo pipeline (per-word targets: --word-targets)"
    )
    p.add_argument("--model", default="shapes-demo", help="demo pipeline folder or zoo name")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=DemoConfig.refer_lr)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--referring", type=float, default=DemoConfig.referring)
    p.add_argument("--word-targets", action="store_true", help="each word onto what it denotes (issue #32)")
    p.add_argument("--generalized", type=float, default=0.0, help="share of referring scenes that are generalized")
    p.add_argument(
        "--more-sizes",
        type=_sides,
        default=(),
        help="comma-separated image sides to train at besides the model's own (batches take turns), e.g. 96",
    )
    p.add_argument(
        "--magnet-captions",
        type=float,
        default=0.0,
        help="share of captions ending with the engine's magnet words (the prompt the engine feeds)",
    )
    p.add_argument(
        "--varied",
        type=float,
        default=0.0,
        help="share of scenes redrawn with varied appearance (turned and outlined shapes, gradient backgrounds)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(func=cmd_finetune_demo)

    return run_command(ap, argv)
