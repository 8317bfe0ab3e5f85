"""``python -m exporters sam --checkpoint PATH --model-type vit_b|vit_l|vit_h --out DIR [--opset N] [--fp16]
[--quantize int8]``"""

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
    args = ap.parse_args(argv)

    from grounding.segment.segmenters import load_sam, sam_type_from_name

    from .sam import export_sam

    try:
        model_type = args.model_type or sam_type_from_name(args.checkpoint)
        sam = load_sam(args.checkpoint, model_type)
        manifest = export_sam(sam, args.out, model_type, args.opset, args.fp16, args.quantize)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "precision": manifest["precision"], "files": manifest["files"]}))
    return 0


sys.exit(main())
