"""Service settings: environment variables, optionally overridden by a YAML file.

| variable | meaning | default |
|---|---|---|
| ``GROUNDING_MODEL`` | hub id, folder or zoo name | the offline default (``shapes-demo``, the shipped model; ``tiny-flux`` in a checkout without it) |
| ``GROUNDING_SEGMENTER`` | SAM checkpoint path; empty = map-threshold masks | empty |
| ``GROUNDING_DEVICE`` | ``cpu`` / ``cuda`` | cuda when available |
| ``GROUNDING_DTYPE`` | ``float32`` / ``bfloat16`` / ``float16`` | bf16 on cuda, fp32 on cpu |
| ``GROUNDING_GRPC_PORT`` | gRPC port; 0 = off | 50051 |
| ``GROUNDING_MAX_BATCH_SIZE`` | adaptive batching: largest batch | 8 |
| ``GROUNDING_MAX_LATENCY_MS`` | adaptive batching: queue latency budget (503 past it) | 60000 |
| ``GROUNDING_MAX_IMAGE_PIXELS`` | larger images get 413 | 40000000 |
| ``GROUNDING_JOBS_DIR`` | video jobs: inputs and per-frame results (resume) | ``<cache>/jobs`` |
| ``GROUNDING_MAX_VIDEO_BYTES`` | larger uploads get 413 | 536870912 |
| ``GROUNDING_ENGINE_TIMEOUT_S`` | wait this long for the model worker's answer, then retry | max latency + 60 s |
| ``GROUNDING_CONFIG`` | YAML file whose keys (same names, lower case, no prefix) override the above | unset |
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    model: str = ""
    segmenter: str = ""
    device: str = ""
    dtype: str = ""
    grpc_port: int = 50051
    max_batch_size: int = 8
    max_latency_ms: int = 60000
    max_image_pixels: int = 40_000_000
    max_expressions: int = 16  # per request
    max_expression_chars: int = 1000  # longer → 400; token overflow below this → truncated with a warning
    jobs_dir: str = ""  # video jobs (inputs, per-frame results); default <cache>/jobs
    max_video_bytes: int = 512 * 2**20
    engine_timeout_s: int = 0  # wait for an engine answer this long, then retry; 0 = max_latency + 60 s

    def engine_timeout(self) -> float:
        return float(self.engine_timeout_s or self.max_latency_ms / 1000 + 60)


def load_settings(environ: dict | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict = {}
    for f in dataclasses.fields(Settings):
        raw = env.get(f"GROUNDING_{f.name.upper()}")
        if raw is not None and raw != "":
            values[f.name] = raw
    path = env.get("GROUNDING_CONFIG")
    if path:
        import yaml

        doc = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(doc) - {f.name for f in dataclasses.fields(Settings)}
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        values.update(doc)
    out = {}
    for f in dataclasses.fields(Settings):
        if f.name in values:
            v = values[f.name]
            out[f.name] = int(v) if f.type in (int, "int") else ("" if v is None else str(v))
    s = Settings(**out)
    from ..backends.zoo import cache_dir, default_model

    if not s.model:
        s = dataclasses.replace(s, model=default_model())
    if not s.jobs_dir:
        s = dataclasses.replace(s, jobs_dir=str(cache_dir() / "jobs"))
    return s
