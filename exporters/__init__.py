"""ONNX exporters (``python -m exporters``)."""
