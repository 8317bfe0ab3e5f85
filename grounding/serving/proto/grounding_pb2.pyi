from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Options(_message.Message):
    __slots__ = ("return_heatmap", "return_mask_png", "mask_format", "threshold", "magnets", "sinks", "sinks_mode", "redistribution", "seed", "views", "instances", "proposals")
    RETURN_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    RETURN_MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAGNETS_FIELD_NUMBER: _ClassVar[int]
    SINKS_FIELD_NUMBER: _ClassVar[int]
    SINKS_MODE_FIELD_NUMBER: _ClassVar[int]
    REDISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    return_heatmap: bool
    return_mask_png: bool
    mask_format: str
    threshold: float
    magnets: bool
    sinks: bool
    sinks_mode: str
    redistribution: bool
    seed: int
    views: str
    instances: str
    proposals: str
    def __init__(self, return_heatmap: _Optional[bool] = ..., return_mask_png: _Optional[bool] = ..., mask_format: _Optional[str] = ..., threshold: _Optional[float] = ..., magnets: _Optional[bool] = ..., sinks: _Optional[bool] = ..., sinks_mode: _Optional[str] = ..., redistribution: _Optional[bool] = ..., seed: _Optional[int] = ..., views: _Optional[str] = ..., instances: _Optional[str] = ..., proposals: _Optional[str] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("image", "expressions", "options")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    EXPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    expressions: _containers.RepeatedScalarFieldContainer[str]
    options: Options
    def __init__(self, image: _Optional[bytes] = ..., expressions: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[Options, _Mapping]] = ...) -> None: ...

class ImageInfo(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y", "label")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    label: int
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., label: _Optional[int] = ...) -> None: ...

class Polygon(_message.Message):
    __slots__ = ("xy",)
    XY_FIELD_NUMBER: _ClassVar[int]
    xy: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, xy: _Optional[_Iterable[float]] = ...) -> None: ...

class Segmentation(_message.Message):
    __slots__ = ("size", "counts", "polygons", "png")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    counts: str
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    png: bytes
    def __init__(self, size: _Optional[_Iterable[int]] = ..., counts: _Optional[str] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ..., png: _Optional[bytes] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("expression", "box", "box_format", "score", "segmentation", "points", "present", "mask_png", "heatmap_png", "warnings", "presence_score", "instances", "best_guess", "segmenter")
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    BOX_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_SCORE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    BEST_GUESS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTER_FIELD_NUMBER: _ClassVar[int]
    expression: str
    box: _containers.RepeatedScalarFieldContainer[float]
    box_format: str
    score: float
    segmentation: Segmentation
    points: _containers.RepeatedCompositeFieldContainer[Point]
    present: bool
    mask_png: bytes
    heatmap_png: bytes
    warnings: _containers.RepeatedScalarFieldContainer[str]
    presence_score: float
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    best_guess: bool
    segmenter: str
    def __init__(self, expression: _Optional[str] = ..., box: _Optional[_Iterable[float]] = ..., box_format: _Optional[str] = ..., score: _Optional[float] = ..., segmentation: _Optional[_Union[Segmentation, _Mapping]] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., present: _Optional[bool] = ..., mask_png: _Optional[bytes] = ..., heatmap_png: _Optional[bytes] = ..., warnings: _Optional[_Iterable[str]] = ..., presence_score: _Optional[float] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., best_guess: _Optional[bool] = ..., segmenter: _Optional[str] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("box", "score", "segmentation", "proposal_score")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    box: _containers.RepeatedScalarFieldContainer[float]
    score: float
    segmentation: Segmentation
    proposal_score: float
    def __init__(self, box: _Optional[_Iterable[float]] = ..., score: _Optional[float] = ..., segmentation: _Optional[_Union[Segmentation, _Mapping]] = ..., proposal_score: _Optional[float] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("image", "results", "timings_ms")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    image: ImageInfo
    results: _containers.RepeatedCompositeFieldContainer[Result]
    timings_ms: _containers.ScalarMap[str, float]
    def __init__(self, image: _Optional[_Union[ImageInfo, _Mapping]] = ..., results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GroundRequest(_message.Message):
    __slots__ = ("image", "expressions", "options")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    EXPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    expressions: _containers.RepeatedScalarFieldContainer[str]
    options: Options
    def __init__(self, image: _Optional[bytes] = ..., expressions: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[Options, _Mapping]] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("expression", "size", "png", "peak", "warnings")
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    PEAK_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    expression: str
    size: _containers.RepeatedScalarFieldContainer[int]
    png: bytes
    peak: _containers.RepeatedScalarFieldContainer[float]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, expression: _Optional[str] = ..., size: _Optional[_Iterable[int]] = ..., png: _Optional[bytes] = ..., peak: _Optional[_Iterable[float]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GroundResponse(_message.Message):
    __slots__ = ("image", "heatmaps", "timings_ms")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    image: ImageInfo
    heatmaps: _containers.RepeatedCompositeFieldContainer[Heatmap]
    timings_ms: _containers.ScalarMap[str, float]
    def __init__(self, image: _Optional[_Union[ImageInfo, _Mapping]] = ..., heatmaps: _Optional[_Iterable[_Union[Heatmap, _Mapping]]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...
