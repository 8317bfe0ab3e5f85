"""``python -m grounding``: segment, segment-video, tiny-model (inference only; the training and
fitting commands are ``python -m training``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Commands of ``python -m training`` (said so when asked of this CLI).
MOVED = ("calibrate", "calibrate-presence", "train-answer-head", "train-demo")


def parse_overrides(pairs: list[str]) -> dict:
    """``--set key=value`` (value parsed as JSON when it parses) → config overrides."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    from .backends.zoo import default_model

    p.add_argument(
        "--model",
        default=default_model(),
        help="a supported diffusers pipeline (FLUX.1/.2, SD3, Qwen-Image, Z-Image): hub id, local "
        "folder or a zoo name such as tiny-flux "
        "(default: $GROUNDING_MODEL, else the offline default)",
    )
    p.add_argument(
        "--segmenter",
        default=os.environ.get("GROUNDING_SEGMENTER") or None,
        help="SAM checkpoint (.pth/.safetensors, type from the name: vit_h/vit_l/vit_b), an ONNX export folder, "
        "or a SAM 2 / SAM 3 tracker / EdgeTAM model (transformers folder or hub id); omit for map-threshold masks",
    )
    p.add_argument(
        "--device", default=os.environ.get("GROUNDING_DEVICE"), help="cpu / cuda (default: cuda if available)"
    )
    p.add_argument("--dtype", default=os.environ.get("GROUNDING_DTYPE"), help="float32 / bfloat16 / float16")
    p.add_argument(
        "--offload",
        choices=["model", "sequential"],
        default=os.environ.get("GROUNDING_OFFLOAD") or None,
        help="diffusers' CPU offload (CUDA)",
    )
    p.add_argument(
        "--quantization",
        choices=["int8", "nf4", "fp8"],
        default=os.environ.get("GROUNDING_QUANTIZATION") or None,
        help="quantize the transformer and text encoders while loading (CUDA; bitsandbytes / torchao)",
    )
    p.add_argument(
        "--text-encoder-device",
        default=os.environ.get("GROUNDING_TEXT_ENCODER_DEVICE") or None,
        help="where the text encoders run, e.g. cpu (default: the model's device)",
    )
    p.add_argument(
        "--text-offload",
        action="store_true",
        default=os.environ.get("GROUNDING_TEXT_OFFLOAD", "0") not in ("", "0"),
        help="text encoders wait on the CPU and visit the GPU per call",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a grounding.json field, e.g. --set sinks.mode=suppress --set 'timesteps=[0.2]'",
    )


def grounder_from_args(args):
    from .backends.load_errors import ModelLoadError, load_error_message
    from .backends.memory import MemoryOptions
    from .config import ConfigError
    from .pipeline.grounder import Grounder

    memory = MemoryOptions(
        offload=args.offload,
        quantization=args.quantization,
        text_encoder_device=args.text_encoder_device,
        text_offload=args.text_offload,
    )
    overrides = parse_overrides(args.set)
    try:
        g = Grounder.from_pretrained(
            args.model, segmenter=args.segmenter, device=args.device, dtype=args.dtype, memory=memory, **overrides
        )
    except (ConfigError, TypeError):  # a bad --set: the caller's input (exit 2)
        raise
    except Exception as e:  # one line with the real cause, not diffusers' last word
        raise ModelLoadError(load_error_message(args.model, e)) from e
    print(f"model {args.model}: {g.config.card.summary()}", file=sys.stderr)
    return g


def cmd_segment(args) -> int:
    import numpy as np
    from PIL import Image

    from .images import open_image
    from .pipeline.result import colorize, overlay

    t0 = time.perf_counter()
    g = grounder_from_args(args)
    t1 = time.perf_counter()
    image = open_image(args.image, g.config.max_image_pixels)
    options = {k: v for k, v in (("proposals", args.proposals), ("instances", args.instances)) if v is not None}
    r = g.segment(image, args.expression, **options)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(r.mask.astype(np.uint8) * 255).save(out / "mask.png")
    Image.fromarray(colorize(r.heatmap)).save(out / "heatmap.png")
    overlay(image, r).save(out / "overlay.png")
    doc = r.to_json()
    doc.update(
        {"image": {"path": str(args.image), "width": image.width, "height": image.height}, "model": str(args.model)}
    )
    doc["timings_ms"]["load_model"] = round((t1 - t0) * 1000, 2)
    (out / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(
        json.dumps(
            {
                "present": doc["present"],
                "presence_score": doc["presence_score"],
                "best_guess": doc["best_guess"],
                "box": doc["box"],
                "score": doc["score"],
                "instances": len(doc["instances"]),
                "out": str(out),
            }
        )
    )
    return 0


def cmd_segment_video(args) -> int:
    from .pipeline.frames import video_fps
    from .pipeline.video import VideoConfig, iter_video
    from .pipeline.video_output import write_outputs

    g = grounder_from_args(args)
    video = VideoConfig(
        batch_frames=args.batch_frames,
        window=args.window,
        motion=args.motion,
        maps=args.maps,
        clip_frames=args.clip_frames,
        clip_overlap=args.clip_overlap,
        propagate=args.propagate,
        keyframe_every=args.keyframe_every,
    )
    out = Path(args.out)
    doc = write_outputs(
        iter_video(g, args.video, args.expression, video), out, video_fps(args.video), overlay_video=not args.no_overlay
    )
    doc.update({"expression": args.expression, "video": str(args.video), "model": str(args.model)})
    (out / "result.json").write_text(json.dumps(doc) + "\n")
    present = sum(f["present"] for f in doc["frames"])
    print(json.dumps({"frames": len(doc["frames"]), "present": present, "keyframe": doc["keyframe"], "out": str(out)}))
    return 0


def cmd_tiny_model(args) -> int:
    from .backends.zoo import require_synthetic

    try:
        synthetic = require_synthetic("tiny-model")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.arch not in synthetic.archs:
        print(f"error: --arch {args.arch!r}: choose one of {', '.join(synthetic.archs)}", file=sys.stderr)
        return 2
    path = synthetic.save(args.dir, args.arch, args.seed, args.size)
    print(f"wrote a tiny random {args.arch} pipeline to {path} (its attention maps are meaningless)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grounding", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("segment", help="segment the referent of EXPRESSION in IMAGE")
    add_model_args(p)
    p.add_argument("image")
    p.add_argument("expression")
    p.add_argument("--out", required=True, help="folder for mask.png, heatmap.png, overlay.png, result.json")
    p.add_argument(
        "--proposals",
        choices=("none", "concept", "regions"),
        default=None,
        help="masks from map prompts (none), SAM 3 instances of the head phrase (concept: a SAM 3 --segmenter) "
        "or image regions (regions), the map choosing among them (default: the model's grounding.json)",
    )
    p.add_argument("--instances", choices=("one", "all"), default=None, help="the referent, or every instance")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("segment-video", help="segment the referent in every frame of a video")
    add_model_args(p)
    p.add_argument("video", help="video file (mp4, webm, …), folder of frames or zip of frames")
    p.add_argument("expression")
    p.add_argument("--out", required=True, help="folder for masks/NNNNN.png (DAVIS palette), overlay.mp4, result.json")
    p.add_argument("--batch-frames", type=int, default=4)
    p.add_argument("--window", type=int, default=2, help="temporal aggregation: frames on each side (0 = off)")
    p.add_argument(
        "--motion", type=int, default=2, help="motion compensation of the aggregation: tokens per frame step (0 = off)"
    )
    p.add_argument(
        "--maps",
        choices=["frame", "clip"],
        default="frame",
        help="frame: the model over each frame; clip: a video DiT (Wan, HunyuanVideo) over windows of frames",
    )
    p.add_argument("--clip-frames", type=int, default=17, help="--maps clip: frames per window (4k + 1 for Wan)")
    p.add_argument("--clip-overlap", type=int, default=4, help="--maps clip: frames shared by neighbouring windows")
    p.add_argument(
        "--propagate",
        action="store_true",
        help="maps at keyframes only; the SAM 2-family --segmenter's video memory carries the mask between them",
    )
    p.add_argument("--keyframe-every", type=int, default=8, help="--propagate: a map at least every N frames")
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    p.set_defaults(func=cmd_segment_video)

    p = sub.add_parser(
        "tiny-model",
        help="write a tiny randomly initialised pipeline folder (tests, benchmarks); "
        "its attention maps are meaningless",
    )
    p.add_argument(
        "--arch",
        default="flux",
        help="flux (FLUX.1), sd3, flux2 (FLUX.2 [dev]), flux2-klein, qwenimage, zimage, "
        "wan / wan2.2 (Wan video, one or two experts), hunyuanvideo",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size",
        choices=["tiny", "medium"],
        default="tiny",
        help="medium: width-512 transformer (4 heads × 128; not sd3) for CPU benchmarks",
    )
    p.add_argument("dir")
    p.set_defaults(func=cmd_tiny_model)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in MOVED:
        print(
            f"error: '{argv[0]}' is training code and moved out of the inference package: "
            f"python -m training {argv[0]} ...",
            file=sys.stderr,
        )
        return 2
    return run_command(ap, argv)


def run_command(ap: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse and run a subcommand; bad input is ``error: ...`` on stderr and exit 2, a model that
    cannot be loaded one ``error: cannot load model ...`` line and exit 1."""
    from .backends.load_errors import ModelLoadError

    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
