"""The one request schema: every option a client can send, declared once with its type and
allowed values, and what it changes in the grounding config.

Ranges and choices come from the config: an option that overrides a config field takes that
field's declared range (``config.bounds``) and its ``Literal`` type, so nothing is declared twice.
The REST endpoints take ``request_model(endpoint)`` as their BentoML ``input_spec``, the gRPC
server reads the same names off ``grounding.v1.Options`` (a test checks that the proto declares
exactly these fields), the engine applies ``Options.overrides()``, and Python callers build
``Options(...)`` directly. ``ENDPOINT_OPTIONS`` says which options each endpoint takes.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from ..config import InstanceMode, ProposalMode, SinkMode, VideoMaps, ViewMode, bounds

MaskFormat = t.Literal["rle", "polygon", "png"]
INT32_MAX = 2**31 - 1  # grounding.v1.Options.seed is an int32
HeatmapFormat = t.Literal["png", "array"]


def _config(key: str) -> dict[str, t.Any]:
    """Field metadata: the ``GroundingConfig`` key an option overrides."""
    return {"config": key}


class Options(BaseModel):
    """Per-request switches. ``None`` = the model's ``grounding.json`` value."""

    model_config = ConfigDict(extra="forbid")

    return_heatmap: bool = Field(False, description="heatmap as a base64 8-bit PNG in each result")
    return_mask_png: bool = Field(False, description="mask as a base64 PNG in each result, besides `segmentation`")
    mask_format: MaskFormat = Field("rle", description="segmentation as COCO RLE, polygons, or a base64 PNG")
    heatmap_format: HeatmapFormat = Field("png", description="/ground: base64 8-bit PNG, or floats at image size")
    threshold: t.Optional[float] = Field(  # type: ignore[call-overload,misc]  # bounds: gt/ge/lt/le keywords
        None,
        **bounds("threshold"),
        description="fraction of the map's max for the region",
        json_schema_extra=_config("threshold"),
    )
    magnets: t.Optional[bool] = Field(
        None, description="RefAM attention magnets", json_schema_extra=_config("magnets.enabled")
    )
    sinks: t.Optional[bool] = Field(
        None, description="global attention sink handling", json_schema_extra=_config("sinks.enabled")
    )
    sinks_mode: t.Optional[SinkMode] = Field(
        None, description="what happens to sinks", json_schema_extra=_config("sinks.mode")
    )
    redistribution: t.Optional[bool] = Field(
        None,
        description="renormalise each image token over the prompt",
        json_schema_extra=_config("redistribution.enabled"),
    )
    seed: t.Optional[int] = Field(  # type: ignore[call-overload,misc]  # bounds: gt/ge/lt/le keywords
        None,
        **{**bounds("seed"), "le": INT32_MAX},  # the config's range, cut to the proto's int32
        description="noise seed (same seed, same map)",
        json_schema_extra=_config("seed"),
    )
    views: t.Optional[ViewMode] = Field(
        None, description="AGLA prompt-masked views", json_schema_extra=_config("views.mode")
    )
    instances: t.Optional[InstanceMode] = Field(
        None,
        description='"one": the referent; "all": every instance the map shows, or none (each in `instances`)',
        json_schema_extra=_config("instances.mode"),
    )
    proposals: t.Optional[ProposalMode] = Field(
        None,
        description='masks from "none": map prompts; "concept": SAM 3 instances of the head phrase (needs a '
        'SAM 3 segmenter); "regions": image regions — the map chooses among them',
        json_schema_extra=_config("proposals.mode"),
    )
    # Video jobs only.
    window: int = Field(2, ge=0, le=16, description="video: temporal aggregation over ±window frames")
    maps: VideoMaps = Field(
        "frame",
        description='video: "frame" — the model over each frame; "clip" — a video '
        "diffusion transformer (Wan, HunyuanVideo) over windows of frames",
    )
    propagate: bool = Field(
        False,
        description="video: the map at keyframes only, the SAM 2-family segmenter's video memory carrying "
        "the mask between them (needs a transformers SAM 2 / SAM 3 tracker / EdgeTAM segmenter)",
    )
    keyframe_every: int = Field(8, ge=1, le=1024, description="video, propagate: a map at least every N frames")
    return_overlay: bool = Field(False, description="video: a base64 overlay mp4 in the result")

    def overrides(self) -> dict[str, t.Any]:
        """The grounding-config overrides these options ask for (``{"sinks.mode": "suppress"}``)."""
        out: dict[str, t.Any] = {}
        for name, f in type(self).model_fields.items():
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            key = extra.get("config")
            value = getattr(self, name)
            if isinstance(key, str) and value is not None:
                out[key] = value
        return out


_RESULT = ("return_heatmap", "return_mask_png", "mask_format")
_REFAM = ("magnets", "sinks", "sinks_mode", "redistribution")
ENDPOINT_OPTIONS: dict[str, tuple[str, ...]] = {
    "segment": (*_RESULT, "threshold", *_REFAM, "seed", "views", "instances", "proposals"),
    "ground": ("heatmap_format", *_REFAM, "seed", "views"),
    "answer_ground": (*_RESULT, "threshold", "seed", "views"),
    "render": ("threshold", "seed", "views"),
    "segment_video": ("window", "maps", "propagate", "keyframe_every", "return_overlay", "threshold", "seed"),
}


def option_for(config_key: str) -> str | None:
    """The request option that overrides the config field ``config_key`` ("proposals.mode" →
    "proposals"); None when no option does."""
    for name, f in Options.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if extra.get("config") == config_key:
            return name
    return None


class RequestError(ValueError):
    """Bad input: ``status`` is the HTTP code (400, 401, 404, 413, 415; 503 when the engine is
    away); gRPC maps it to INVALID_ARGUMENT (NOT_FOUND for 404, UNAVAILABLE for 503). ``field``
    names the offending field when there is one."""

    def __init__(self, message: str, status: int = 400, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field


def error_body(message: str, field: str | None = None) -> dict[str, t.Any]:
    """The one error body of the REST service: ``{"error": message, "field": name-or-null}``."""
    return {"error": message, "field": field}


def parse_options(values: dict[str, t.Any], endpoint: str | None = None) -> Options:
    """Option values (``None`` = not given) → ``Options``; ``RequestError`` naming the field."""
    allowed = ENDPOINT_OPTIONS[endpoint] if endpoint else tuple(Options.model_fields)
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise RequestError(f"unknown options: {unknown}", field=unknown[0])
    try:
        return Options(**{k: v for k, v in values.items() if v is not None})
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else None
        raise RequestError(f"{name}: {err['msg']}, got {err.get('input')!r}", field=name) from None


# --- request models for the REST endpoints (BentoML ``input_spec``) ------------------------------
FILE_FIELDS = ("image", "video")  # multipart file parts only: text in their place is never fetched
ROUTES: dict[str, str] = {  # POST route → the endpoint whose request the guard checks
    "/segment": "segment",
    "/ground": "ground",
    "/answer_ground": "answer_ground",
    "/render": "render",
    "/segment_video": "segment_video",
    "/segment_video/submit": "segment_video",
    "/video_progress": "task",
    "/video_cancel": "task",
}
ONE_EXPRESSION = ("render", "segment_video")  # endpoints that take a single expression


def _image_fields() -> dict[str, t.Any]:
    return {"image": (Path, None), "image_base64": (t.Optional[str], None)}


def input_fields(endpoint: str) -> tuple[str, ...]:
    """The non-option fields of an endpoint's request."""
    if endpoint == "task":
        return ("task_id",)
    inputs = ("video",) if endpoint == "segment_video" else ("image", "image_base64")
    return (*inputs, *_TEXT_FIELDS[endpoint])


_TEXT_FIELDS: dict[str, dict[str, t.Any]] = {
    "segment": {"expression": (t.Union[str, t.List[str], None], None)},
    "ground": {"expression": (t.Union[str, t.List[str], None], None)},
    "answer_ground": {"question": (t.Optional[str], None), "answer": (t.Optional[str], None)},
    "render": {"expression": (t.Optional[str], None)},
    "segment_video": {"expression": (t.Optional[str], None)},
}


def request_model(endpoint: str) -> type[BaseModel]:
    """The REST request of ``endpoint``: its input fields and its options, typed as in ``Options``
    (so BentoML's validation and ours agree)."""
    inputs = {"video": (Path, None)} if endpoint == "segment_video" else _image_fields()
    fields: dict[str, t.Any] = {**inputs, **_TEXT_FIELDS[endpoint]}
    for name in ENDPOINT_OPTIONS[endpoint]:
        f = Options.model_fields[name]
        fields[name] = (f.annotation, f)
    return pydantic.create_model(f"{endpoint.title().replace('_', '')}Request", **fields)


def split_request(endpoint: str, fields: dict[str, t.Any]) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """A request's fields → (inputs, option values)."""
    names = set(ENDPOINT_OPTIONS[endpoint])
    return ({k: v for k, v in fields.items() if k not in names}, {k: v for k, v in fields.items() if k in names})
