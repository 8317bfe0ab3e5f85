"""Training and fitting code, outside the inference path: the demo-model trainer, calibration,
answer-head training. ``grounding`` never imports it."""
