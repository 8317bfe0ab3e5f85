"""``python -m exporters sam --checkpoint PATH --model-type vit_b|vit_l|vit_h --out DIR [--opset N] [--fp16]
[--quantize int8] [--optimize]``

``python -m exporters sam2 --model HUB_ID_OR_FOLDER --out DIR [--opset N] [--quantize int8] [--no-optimize]``
(SAM 2 / 2.1, SAM 3's tracker or EdgeTAM, the class read from its config)"""

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exporters", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sam", help="SAM image encoder + prompt decoder (up to low-res masks) as ONNX")
    p.add_argument("--checkpoint", required=True, help="segment-anything checkpoint (.pth / .safetensors)")
    p.add_argument("--model-type", default=None, help="vit_b / vit_l / vit_h / tiny (default: from the file name)")
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--fp16", action="store_true", help="half-precision graphs (for the CUDA provider)")
    p.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 weight quantization")
    p.add_argument("--optimize", action="store_true", help="the encoder through onnxruntime's transformer optimizer")
    p2 = sub.add_parser("sam2", help="a SAM 2-family model's image encoder + prompt decoder and its processor as ONNX")
    p2.add_argument("--model", required=True, help="hub id or folder of a Sam2 / Sam3Tracker / EdgeTam model")
    p2.add_argument("--out", required=True)
    p2.add_argument("--opset", type=int, default=17)
    p2.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 weight quantization")
    p2.add_argument(
        "--no-optimize", dest="optimize", action="store_false", help="skip onnxruntime's transformer optimizer"
    )
    args = ap.parse_args(argv)

    try:
        if args.cmd == "sam":
            from grounding.segment.segmenters import load_sam, sam_type_from_name

            from .sam import export_sam

            model_type = args.model_type or sam_type_from_name(args.checkpoint)
            sam = load_sam(args.checkpoint, model_type)
            manifest = export_sam(sam, args.out, model_type, args.opset, args.fp16, args.quantize, args.optimize)
        else:
            import transformers

            from grounding.segment.transformers_sam import family_of

            from .sam2 import export_sam2

            family = family_of(args.model)
            model = getattr(transformers, family.model).from_pretrained(args.model)
            processor = getattr(transformers, family.processor).from_pretrained(args.model)
            manifest = export_sam2(
                model, processor, args.out, args.opset, args.quantize, args.optimize, source=args.model
            )
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "precision": manifest["precision"], "files": manifest["files"]}))
    return 0
