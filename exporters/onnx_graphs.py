"""What the SAM and SAM 2 exporters share: a module → one ONNX file (external data past 2 GB),
onnxruntime's transformer graph optimizer over it, dynamic int8 quantization, and the manifest's
file table. Each step rewrites the file in place and says what it did, for the manifest."""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grounding.segment.manifest import sha256

TWO_GB = 2 * 1024**3
# Fused operators the optimizer can write (com.microsoft domain), counted in the manifest.
FUSED_OPS = (
    "MultiHeadAttention",
    "Attention",
    "LayerNormalization",
    "SkipLayerNormalization",
    "SimplifiedLayerNormalization",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "BiasAdd",
)


def too_large(module: nn.Module, bytes_per_param: int = 4) -> bool:
    """Whether ``module``'s weights need ONNX external data (a protobuf holds at most 2 GB)."""
    return sum(p.numel() for p in module.parameters()) * bytes_per_param > TWO_GB - 64 * 2**20


def export_graph(
    module: nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    opset: int,
    dynamic_axes: dict | None,
    large: bool,
) -> list[str]:
    """Trace ``module`` on ``args`` into ``path``; graphs over 2 GB keep their weights as ONNX external
    data beside it. Returns the files written."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )
    files = [path.name]
    if large:
        model = onnx.load(str(path))
        data = path.name + ".data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
        files.append(data)
    return files


def op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each fused operator (``FUSED_OPS``) the graph at ``path`` holds."""
    import onnx

    counts = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: counts[op] for op in FUSED_OPS if counts[op]}


def run_graph(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The graph at ``path`` run once on ``feeds`` (CPU provider, warnings off)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def relative_diff(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """The largest ``max |got − want| / max |want|`` over paired outputs (0 when equal): how far a
    rewritten or quantized graph strays, on the scale of what it computes."""
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        scale = float(np.abs(b).max()) or 1.0
        worst = max(worst, float(np.abs(np.asarray(a, np.float64) - b).max()) / scale)
    return worst


def optimize_graph(
    path: Path,
    model_type: str,
    probe: dict[str, np.ndarray],
    disable: tuple[str, ...] = (),
    tolerance: float = 1e-4,
) -> dict:
    """onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer``, ``model_type``
    one of its fusion families: ``sam2``, ``vit``, ``bert`` …) over the graph at ``path``, in place:
    attention, layer norm and GELU patterns it recognises become single fused operators
    (``disable``: fusions to leave out, ``FusionOptions`` names without ``enable_``). Offline
    fusions only (``opt_level`` 0): the session applies its own graph optimizations when it loads.
    The rewritten graph must compute what the original does on ``probe`` (``relative_diff`` ≤
    ``tolerance``), else ``ValueError`` and the original stays. Returns what it did, for the manifest."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    before = op_counts(path)
    options = FusionOptions(model_type)
    for name in disable:
        setattr(options, f"enable_{name}", False)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")  # and its progress bar and shape-inference notices
        model = optimize_model(
            str(path), model_type=model_type, optimization_options=options, opt_level=0, use_gpu=False
        )
    rewritten = path.with_suffix(".optimized.onnx")
    model.save_model_to_file(str(rewritten))
    diff = relative_diff(run_graph(rewritten, probe), run_graph(path, probe))
    if diff > tolerance:
        rewritten.unlink()
        raise ValueError(
            f"onnxruntime's optimizer ({model_type}) changed {path.name}'s outputs by {diff:.2e} of their scale "
            f"(tolerance {tolerance:.0e}); export without optimizing, or disable the fusion at fault"
        )
    rewritten.replace(path)
    return {
        "tool": "onnxruntime.transformers.optimizer",
        "model_type": model_type,
        "disabled": list(disable),
        # nodes the optimizer added per fused operator (opset 17 already exports LayerNormalization)
        "fused": {op: n - before.get(op, 0) for op, n in op_counts(path).items() if n > before.get(op, 0)},
        "relative_diff": diff,
    }


def quantize_graph(path: Path, files: list[str]) -> list[str]:
    """Dynamic int8 quantization of the graph at ``path`` (weights int8, activations quantized per
    run), in place; ``files`` are the graph's files (with its external data), which the quantized
    graph — a quarter of the size, one file — replaces. Returns the files it leaves."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".int8.onnx")
    # Shape inference stops at the optimizer's com.microsoft operators: their outputs are float.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    logging.disable(logging.WARNING)  # its per-tensor "failed to infer data type" notices about them
    try:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, extra_options=extra)
    finally:
        logging.disable(logging.NOTSET)
    for f in files:
        (path.parent / f).unlink()
    tmp.rename(path)
    return [path.name]


def file_table(folder: Path, names: list[str]) -> dict[str, dict]:
    """The manifest's ``files``: each file's SHA-256 and size, which loading checks."""
    return {f: {"sha256": sha256(folder / f), "bytes": (folder / f).stat().st_size} for f in names}
