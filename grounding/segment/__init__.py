"""Segment stage: map → heatmap (refinement) → prompts → mask (SAM, ONNX SAM, or the map region)."""
