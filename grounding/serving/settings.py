"""Service settings: environment variables, optionally overridden by a YAML file.

| variable | meaning | default |
|---|---|---|
| ``GROUNDING_MODEL`` | hub id, folder or zoo name | the offline default (``shapes-demo``, the shipped model; ``tiny-flux`` in a checkout without it) |
| ``GROUNDING_SEGMENTER`` | SAM checkpoint path, ONNX export folder, or a SAM 2 / SAM 3 tracker / EdgeTAM folder or hub id; empty = map-threshold masks | empty |
| ``GROUNDING_DEVICE`` | ``cpu`` / ``cuda`` | cuda when available |
| ``GROUNDING_DTYPE`` | ``float32`` / ``bfloat16`` / ``float16`` | bf16 on cuda, fp32 on cpu |
| ``GROUNDING_GRPC_PORT`` | gRPC port (engine worker *i* of several: port + *i* − 1); 0 = off | the REST port + 1 (3001 under ``make serve``) |
| ``GROUNDING_MAX_BATCH_SIZE`` | adaptive batching: largest batch | 8 |
| ``GROUNDING_MAX_LATENCY_MS`` | adaptive batching: queue latency budget (503 past it) | 60000 |
| ``GROUNDING_MAX_IMAGE_PIXELS`` | larger images get 413 | 40000000 |
| ``GROUNDING_JOBS_DIR`` | video jobs: inputs and per-frame results (resume) | ``<cache>/jobs`` |
| ``GROUNDING_MAX_VIDEO_BYTES`` | larger uploads get 413 | 536870912 |
| ``GROUNDING_ENGINE_TIMEOUT_S`` | wait this long for the model worker's answer, then retry once | max latency + ``ENGINE_MARGIN_S`` |
| ``GROUNDING_ENGINE_MARGIN_S`` | the engine's own working time on top of the queue budget | 10 |
| ``GROUNDING_MAX_BODY_MB`` | request bodies over this get 413 before they are read whole; 0 = sized per route for the largest allowed image (base64 included) or video | 0 |
| ``GROUNDING_BODY_TIMEOUT_S`` | a request body that stops arriving this long gets 408 | 30 |
| ``GROUNDING_SHUTDOWN_GRACE_S`` | after SIGTERM, in-flight requests get this long, then 503 and exit | 10 |
| ``GROUNDING_API_KEY`` / ``GROUNDING_API_KEY_FILE`` | when set, REST needs ``Authorization: Bearer <key>`` and gRPC the same metadata | off |
| ``GROUNDING_GRPC_HOST`` | gRPC bind address | ``HOST`` (the one ``make serve`` gives REST), else 127.0.0.1 |
| ``GROUNDING_GRPC_TLS_CERT`` / ``GROUNDING_GRPC_TLS_KEY`` | PEM files: gRPC over TLS | plaintext |
| ``GROUNDING_JOBS_TTL_H`` | finished video jobs older than this are deleted | 24 |
| ``GROUNDING_JOBS_MAX_GB`` | the jobs folder's cap: oldest finished jobs go first, running ones never | 20 |
| ``GROUNDING_WORKERS`` | engine workers; with ``cuda``, worker *i* is pinned to GPU *(i-1) mod count* | 1 |
| ``GROUNDING_OFFLOAD`` | ``model`` / ``sequential``: diffusers' CPU offload (CUDA) | off |
| ``GROUNDING_QUANTIZATION`` | ``int8`` / ``nf4`` (bitsandbytes) / ``fp8`` (torchao): transformer and text encoders (CUDA) | off |
| ``GROUNDING_TEXT_ENCODER_DEVICE`` | where the text encoders run, e.g. ``cpu`` (embeddings move to the model's device) | the model's device |
| ``GROUNDING_TEXT_OFFLOAD`` | 1: text encoders wait on the CPU and visit the GPU per call | 0 |
| ``GROUNDING_TEXT_CACHE_SIZE`` | prompt embeddings kept (LRU); 0 = no cache | 64 |
| ``GROUNDING_LABEL_STUDIO_URL`` | the Label Studio server whose task images the ML backend (``/labelstudio``) may read; no other host is ever fetched | unset (only ``data:`` images) |
| ``GROUNDING_LABEL_STUDIO_TOKEN`` | that server's API token for reading task images | the ``access_token`` Label Studio sends to ``/setup`` |
| ``GROUNDING_CONFIG`` | YAML file whose keys (same names, lower case, no prefix) override the above | unset |
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    model: str = ""
    segmenter: str = ""
    device: str = ""
    dtype: str = ""
    grpc_port: int = -1  # -1: the REST port + 1 (resolved by load_settings)
    max_batch_size: int = 8
    max_latency_ms: int = 60000
    max_image_pixels: int = 40_000_000
    max_expressions: int = 16  # per request
    max_expression_chars: int = 1000  # longer → 400; token overflow below this → truncated with a warning
    jobs_dir: str = ""  # video jobs (inputs, per-frame results); default <cache>/jobs
    max_video_bytes: int = 512 * 2**20
    engine_timeout_s: int = 0  # wait for an engine answer this long, then retry once; 0 = max_latency + margin
    engine_margin_s: int = 10
    max_body_mb: int = 0  # 0 = per route: the largest allowed image (as base64) or video
    body_timeout_s: int = 30  # a request body that stops coming this long → 408
    shutdown_grace_s: int = 10
    api_key: str = ""
    api_key_file: str = ""
    label_studio_url: str = ""  # the one Label Studio server the ML backend reads task images from
    label_studio_token: str = ""
    grpc_host: str = ""  # default: $HOST, else 127.0.0.1
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    jobs_ttl_h: float = 24.0
    jobs_max_gb: float = 20.0
    workers: int = 1
    offload: str = ""
    quantization: str = ""
    text_encoder_device: str = ""
    text_offload: int = 0
    text_cache_size: int = 64

    def memory(self):
        """The ``MemoryOptions`` these settings ask for (checked when built)."""
        from ..backends.memory import MemoryOptions

        return MemoryOptions(
            offload=self.offload or None,
            quantization=self.quantization or None,
            text_encoder_device=self.text_encoder_device or None,
            text_offload=bool(self.text_offload),
            text_cache_size=self.text_cache_size,
        )

    def worker_grpc_port(self, worker_index: int) -> int:
        """The gRPC port of engine worker ``worker_index`` (1-based): ``grpc_port + index − 1``, so
        several workers never share a port; 0 = gRPC off."""
        return self.grpc_port + worker_index - 1 if self.grpc_port > 0 else 0

    def engine_timeout(self) -> float:
        """Seconds a REST call waits for the engine: ``engine_timeout_s``, else the latency budget plus a margin."""
        return float(self.engine_timeout_s or self.max_latency_ms / 1000 + self.engine_margin_s)

    def body_limit(self, video: bool) -> int:
        """Bytes a request body may have: ``max_body_mb``, else the largest allowed upload plus
        1 MiB of form overhead (an image: every pixel as 8-byte RGBA16, as base64)."""
        if self.max_body_mb:
            return self.max_body_mb * 2**20
        largest = self.max_video_bytes if video else self.max_image_pixels * 8 * 4 // 3
        return largest + 2**20

    def key(self) -> str:
        """The API key ("" = off): ``api_key``, else the first line of ``api_key_file``."""
        if self.api_key:
            return self.api_key
        if self.api_key_file:
            key = Path(self.api_key_file).read_text().strip()
            if not key:
                raise ValueError(f"GROUNDING_API_KEY_FILE {self.api_key_file} is empty")
            return key
        return ""


def rest_port(env) -> int:
    """The REST port of the server this process belongs to: BentoML tells every worker where each
    service listens (``BENTOML_RUNNER_MAP``); outside a server, ``$PORT`` or BentoML's 3000."""
    import json
    from urllib.parse import urlsplit

    try:
        url = json.loads(env.get("BENTOML_RUNNER_MAP") or "{}").get("grounding", "")
        port = urlsplit(url).port if url.startswith("http") else None
    except (ValueError, AttributeError):
        port = None
    return port or int(env.get("PORT") or 3000)


def load_settings(environ: dict | None = None) -> Settings:
    """``Settings`` from ``GROUNDING_*`` environment variables (empty ones ignored); a bad value names its variable."""
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
    out: dict[str, Any] = {}
    casts: dict[str, type] = {"int": int, "float": float}
    for f in dataclasses.fields(Settings):
        if f.name in values:
            v, cast = values[f.name], casts.get(str(f.type))
            try:
                out[f.name] = cast(v) if cast else ("" if v is None else str(v))
            except (TypeError, ValueError):
                raise ValueError(
                    f"GROUNDING_{f.name.upper()}={v!r} is not a{'n' if cast is int else ''} {f.type}"
                ) from None
    if out.get("grpc_port", -1) == -1:
        out["grpc_port"] = rest_port(env) + 1
    if "grpc_host" not in out:
        out["grpc_host"] = env.get("HOST") or "127.0.0.1"
    s = Settings(**out)
    from ..backends.zoo import cache_dir, default_model

    if not s.model:
        s = dataclasses.replace(s, model=default_model())
    if not s.jobs_dir:
        s = dataclasses.replace(s, jobs_dir=str(cache_dir() / "jobs"))
    return s
