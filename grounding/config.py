"""Engine settings as dataclasses, stored beside a model as ``grounding.json``.

Every option group and its checks live here (~470 lines) so that ``grounding.json``'s whole schema
— types, ``Literal`` choices and the ranges the request schema also reads (``bounded``) — is
declared in one place."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

SinkMode = Literal["redirect", "suppress"]
ViewMode = Literal["global", "assembled"]
ViewFill = Literal["blur", "mean", "attention"]
InstanceMode = Literal["one", "all"]
PresenceRule = Literal["model", "agreement"]
ProposalMode = Literal["none", "concept", "regions"]
VideoMaps = Literal["frame", "clip"]  # where video maps come from (pipeline.video.VideoConfig.maps)

CONFIG_NAME = "grounding.json"

# Function words that carry no referent. Inside an expression they get weight 0; appended to the
# prompt they act as attention magnets (RefAM). Counts ("two", "3") say how many, not which.
STOP_WORDS: frozenset[str] = frozenset(
    """a an the this that these those of on in at to for from by with without and or but nor
    is are was were be been being it its which who whom whose where when while as than then
    into onto upon over under above below near next beside besides between behind before after
    there here some any each every all both either neither one his her their our your my me
    him them us we you he she they i do does did has have had not no yes very too also just
    so such what how why many much two three four five six seven eight nine ten""".split()
)


def bounded(
    default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None
) -> Any:
    """A config field with its allowed range, declared once: ``_Checked`` checks it when the config
    is built (every element of a tuple; ``None`` passes where the type allows it), and the request
    schema reads it (``bounds``) for the options that override the field."""
    limits = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"bounds": limits})


def bounds(key: str) -> dict[str, float]:
    """The declared range of the ``GroundingConfig`` field ``key`` (``"threshold"``,
    ``"sinks.quantile"``) as pydantic's ``gt`` / ``ge`` / ``lt`` / ``le``; ``{}`` when it has none."""
    cls: Any = GroundingConfig
    *groups, leaf = key.split(".")
    for g in groups:
        cls = {f.name: f for f in dataclasses.fields(cls)}[g].default_factory
    return dict({f.name: f for f in dataclasses.fields(cls)}[leaf].metadata.get("bounds", {}))


def _check_bounds(name: str, value: Any, limits: dict[str, float]) -> None:
    for v in value if isinstance(value, tuple) else (value,):
        if v is None:
            continue
        ok = all(
            (op == "gt" and v > x) or (op == "ge" and v >= x) or (op == "lt" and v < x) or (op == "le" and v <= x)
            for op, x in limits.items()
        )
        if ok:
            continue
        low = ("(", limits["gt"]) if "gt" in limits else ("[", limits["ge"]) if "ge" in limits else None
        high = (")", limits["lt"]) if "lt" in limits else ("]", limits["le"]) if "le" in limits else None
        if low and high:
            allowed = f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
        elif low:
            allowed = f"{'>' if low[0] == '(' else '≥'} {low[1]}"
        else:
            assert high is not None
            allowed = f"{'<' if high[0] == ')' else '≤'} {high[1]}"
        raise ConfigError(f"{name} must be {allowed}, got {v}")


class _Checked:
    """Every config dataclass checks its fields when it is built: ``Literal`` choices (ValueError
    listing the allowed values), bools, numbers, tuples (a single value is a 1-tuple), and the
    ranges declared with ``bounded``.
    ``_shorthand`` maps a plain value's type to the field it sets when the whole sub-config is
    given as that value (``views="assembled"`` → ``views.mode``)."""

    _shorthand: typing.ClassVar[dict[type, str]] = {}
    _group: typing.ClassVar[str] = ""  # the field of GroundingConfig that holds this group

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(cast(Any, self)):
            name = f"{self._group}.{f.name}" if self._group else f.name
            value = _check(name, hints[f.name], getattr(self, f.name))
            if f.metadata.get("bounds"):
                _check_bounds(name, value, f.metadata["bounds"])
            object.__setattr__(self, f.name, value)
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Checks beyond a field's own range (e.g. a tuple that must not be empty)."""


@dataclass
class MagnetConfig(_Checked):
    """Attention magnets: stop words appended to the expression, then left out of the map."""

    _group = "magnets"

    enabled: bool = True
    words: tuple[str, ...] = ("and", "of", "with", "the", "a")
    # Optional colour word appended as one more magnet (RefAM summaries mention one); None = off.
    colour_word: str | None = None
    # Weight of the head noun relative to other content words (1.0 = no emphasis).
    head_noun_weight: float = 2.0
    # Weight of content words in the complement of a relation (the anchor object of "left of the
    # yellow circle", the bench of "on the left of the bench"); 1.0 = no special treatment.
    complement_weight: float = 1.0

    _shorthand = {bool: "enabled"}


@dataclass
class SinkConfig(_Checked):
    """Global attention sinks: image tokens bright in the map of (nearly) every text token.

    Per block, each text token's column is normalised over image tokens, so uniform attention
    is ``1/N``. An image token is a sink in that block when its share, at the ``quantile`` over
    the valid text tokens, exceeds ``threshold × (1/N)``: it is bright regardless of the word.
    """

    _group = "sinks"

    enabled: bool = True
    threshold: float = 8.0
    quantile: float = bounded(0.1, ge=0.0, le=1.0)
    mode: SinkMode = "redirect"  # "suppress" (zero + renormalise) | "redirect" (mass → magnets)
    # Blocks are checked from this fraction of depth on (0.0 = every block).
    min_depth: float = bounded(0.0, ge=0.0, le=1.0)

    _shorthand = {bool: "enabled", str: "mode"}


@dataclass
class RedistributionConfig(_Checked):
    """Per image token, renormalise attention over the captured text tokens (magnets included)."""

    _group = "redistribution"

    enabled: bool = True

    _shorthand = {bool: "enabled"}


@dataclass
class ViewsConfig(_Checked):
    """AGLA-style prompt-masked views (arXiv 2406.12718), adapted from decoding to grounding.

    ``assembled``: the global map G picks the tokens to keep (top ``keep`` fraction of G after a
    Gaussian blur of ``smooth`` tokens; ``keep=None`` → ``1 − s/2`` with ``s`` the map's match
    score), the rest of the image is filled (``blur`` / ``mean``: re-encoded and re-noised with the
    global pass's seeded noise; ``attention``: same image, but text queries may not attend to
    dropped image keys), a local pass gives L, and
    ``log F = log G + alpha·log(L + lam/N)`` on the support ``G ≥ beta·max G`` (0 elsewhere).
    """

    _group = "views"

    mode: ViewMode = "global"
    fill: ViewFill = "blur"
    keep: float | None = bounded(None, gt=0.0, le=1.0)
    smooth: float = 1.0
    alpha: float = 1.0
    beta: float = 0.2
    lam: float = 1.0

    _shorthand = {str: "mode"}


@dataclass
class RefineConfig(_Checked):
    """Edge-aware refinement of the upsampled heatmap (``refine``): a colour guided filter with
    the image as guide, window radius ``radius`` token cells, regulariser ``eps`` (smaller = edges
    followed more closely). Off by default: SAM draws the mask edges; the map-threshold segmenter
    gains most from it. Images with a side over ``max_side`` px are filtered at that size and the
    filter's coefficients upsampled (bounded memory)."""

    _group = "refine"

    enabled: bool = False
    radius: float = 4.0
    eps: float = 0.01
    max_side: int = 512

    _shorthand = {bool: "enabled"}


@dataclass
class PresenceConfig(_Checked):
    """Is the referent in the image? ``rule="model"``: a logistic model over map features
    (``presence.FEATURES``), fitted by ``python -m training calibrate-presence``; ``present =
    score ≥ threshold`` and a non-empty mask. Unfitted (no weights): the score is the map's
    concentration and ``present`` only asks for a non-empty mask.
    ``rule="agreement"``: the expression's attribute words must light one region
    (``readout.agreement``; no training data of the model needed): ``present = word agreement ≥
    agreement_threshold`` and a non-empty mask, the score being the agreement; an expression with
    one attribute word has no agreement to read and falls back to the model. The word maps pool
    the ``word_blocks`` (captured besides ``blocks``; None = the captured blocks)."""

    _group = "presence"

    weights: dict[str, float] = field(default_factory=dict)
    bias: float = 0.0
    threshold: float = 0.5
    rule: PresenceRule = "model"
    agreement_threshold: float = bounded(0.5, ge=0.0, le=1.0)
    word_blocks: tuple[str, ...] | None = None

    def _check_ranges(self) -> None:
        if self.word_blocks is not None and not self.word_blocks:
            raise ConfigError("presence.word_blocks must name at least one block, or be None")


@dataclass
class AnswerConfig(_Checked):
    """Answer grounding (training-free): the map of "question + answer" divided by the map of a
    generic prompt (CARVE-style contrast, arXiv 2509.06461): ``G(Q) / (G(generic) + λ)`` with
    λ the ``percentile`` of the generic map, so regions every prompt lights up are discounted."""

    _group = "answer"

    contrast: bool = True
    generic_prompt: str = "a photo"
    percentile: float = bounded(50.0, ge=0.0, le=100.0)
    # Use the model folder's trained answer head (``answer_head.safetensors``) when it has one.
    head: bool = True


@dataclass
class InstancesConfig(_Checked):
    """Several instances, or none, for one expression (generalized referring). ``one``: today's
    single referent. ``all``: each separate high region of the map (connected regions of
    ``map ≥ threshold``, best peak first) is segmented on its own; a region is kept when its peak
    is at least ``min_relative_peak`` of the best one and it covers ``min_area`` of the image;
    instances whose masks overlap a kept one by IoU > ``nms_iou`` are dropped; at most
    ``max_instances``, or the number the expression asks for ("the two circles", "both squares")."""

    _group = "instances"

    mode: InstanceMode = "one"
    min_relative_peak: float = bounded(0.6, ge=0.0, le=1.0)
    min_area: float = bounded(0.002, ge=0.0, le=1.0)
    nms_iou: float = bounded(0.5, ge=0.0, le=1.0)
    max_instances: int = bounded(10, ge=1)

    _shorthand = {str: "mode"}


@dataclass
class ProposalsConfig(_Checked):
    """Instance proposals chosen by the sentence's map (``segment.proposals``). ``none``: masks
    from map prompts (points and box for the segmenter). ``concept``: SAM 3's concept segmentation
    of the expression's head phrase ("the dog left of the bench" → "dog") proposes every instance
    with a score (instances scoring under ``min_score`` are dropped; needs a SAM 3 segmenter);
    ``regions``: a training-free proposer — scikit-image's graph-based segmentation
    (Felzenszwalb–Huttenlocher, ``scale`` / ``sigma``), adjacent segments whose mean colours
    differ by less than ``merge`` (RGB, 0–255) merged, holes filled, regions
    covering ``min_area``–``max_area`` of the image kept (``scale`` is per 64² pixels: it grows
    with the image, so an image and its upsampled copy split alike). The map then chooses: one proposal for a
    referring expression, several under ``instances="all"`` (``instances``' relative-score,
    overlap and count rules); when no proposal is found, map prompts are used (with a warning)."""

    _group = "proposals"

    mode: ProposalMode = "none"
    min_score: float = bounded(0.5, ge=0.0, le=1.0)
    scale: float = bounded(100.0, gt=0.0)
    sigma: float = bounded(0.5, ge=0.0)
    merge: float = bounded(20.0, ge=0.0)
    min_area: float = bounded(0.004, ge=0.0, le=1.0)
    max_area: float = bounded(0.5, gt=0.0, le=1.0)

    _shorthand = {str: "mode"}

    def _check_ranges(self) -> None:
        if self.min_area >= self.max_area:
            raise ConfigError(
                f"proposals.min_area ({self.min_area}) must be below proposals.max_area ({self.max_area})"
            )


@dataclass
class ModelCard(_Checked):
    """What a model knows and how its settings were fitted: ``/info``, the page's banner and the
    CLI say it, so nobody reads a shapes model's answer on a photograph as a finding. Stored in
    ``grounding.json`` (the calibration commands add their runs); no request can change it (the
    service's schema has no such option)."""

    _group = "card"

    # What it grounds, in words: the images and expressions it was made or calibrated for.
    domain: str = ""
    # True once a calibration command has fitted this folder's settings on data.
    calibrated: bool = False
    # How and on what (commands and data sets), one entry per calibration run.
    calibration: tuple[str, ...] = ()
    notes: str = ""

    UNCALIBRATED: typing.ClassVar[str] = (
        "uncalibrated defaults: maps and thresholds were not fitted to this "
        "model; run `python -m training calibrate` on your data"
    )

    def summary(self) -> str:
        """One sentence for a banner or a log line."""
        if not self.calibrated:
            return f"{self.domain}; {self.UNCALIBRATED}" if self.domain else self.UNCALIBRATED
        return f"{self.domain or 'domain not stated'}; calibrated ({'; '.join(self.calibration)})"

    def to_info(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "calibration": list(self.calibration), "summary": self.summary()}


@dataclass
class GroundingConfig(_Checked):
    """Everything that decides how a map is made. Defaults are documented in README."""

    # Long side of the image fed to the VAE (rounded to the model's patch multiple).
    resolution: int = bounded(1024, ge=1)
    # Noise levels (flow-matching sigma in [0, 1)); maps are averaged over them.
    timesteps: tuple[float, ...] = bounded((0.3,), ge=0.0, lt=1.0)
    seed: int = bounded(0, ge=0, le=2**63 - 1)
    # Text length the transformer sees (padding included); None = the pipeline's default.
    max_sequence_length: int | None = bounded(None, ge=1)
    # FLUX-dev style guidance embedding value (ignored by models without one).
    guidance_scale: float = 3.5
    # Blocks to capture: None = all joint/single blocks. Names as in `Backend.block_names`.
    blocks: tuple[str, ...] | None = None
    # Relative weights; missing blocks/heads get weight 1. Keys: block name, or "block/head".
    block_weights: dict[str, float] = field(default_factory=dict)
    head_weights: dict[str, float] = field(default_factory=dict)
    magnets: MagnetConfig = field(default_factory=MagnetConfig)
    sinks: SinkConfig = field(default_factory=SinkConfig)
    redistribution: RedistributionConfig = field(default_factory=RedistributionConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    instances: InstancesConfig = field(default_factory=InstancesConfig)
    proposals: ProposalsConfig = field(default_factory=ProposalsConfig)
    card: ModelCard = field(default_factory=ModelCard)
    # Map → prompts: fraction of the map's max used to threshold the referent region.
    threshold: float = bounded(0.5, gt=0.0, lt=1.0)
    positive_points: int = bounded(1, ge=1)
    negative_points: int = bounded(0, ge=0)
    max_image_pixels: int = bounded(40_000_000, ge=1)

    def _check_ranges(self) -> None:
        if not self.timesteps:
            raise ConfigError("timesteps must hold at least one noise level")
        if self.blocks is not None and not self.blocks:
            raise ConfigError("blocks must name at least one block, or be None for all")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroundingConfig":
        out: GroundingConfig = _from_dict(cls, data, "")
        return out

    def replace(self, **changes: Any) -> "GroundingConfig":
        """A checked copy with fields changed: top-level (``seed=1``), dotted or double-underscore
        sub-fields (``"sinks.mode"``, ``sinks__mode``), or a group's shorthand (``views="assembled"``
        is ``views__mode="assembled"``, ``magnets=False`` is ``magnets__enabled=False``)."""
        data = self.to_dict()
        groups: dict[str, Any] = {
            f.name: f.default_factory
            for f in dataclasses.fields(self)
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)
        }
        for key, value in changes.items():
            path = key.replace("__", ".").split(".")
            if len(path) == 1 and path[0] in groups:
                group, cls = path[0], groups[path[0]]
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    value = dataclasses.asdict(value)
                if isinstance(value, dict):
                    unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
                    if unknown:
                        raise ConfigError(
                            f"unknown {group} options {sorted(unknown)}; known: "
                            f"{[f.name for f in dataclasses.fields(cls)]}"
                        )
                    data[group].update(value)
                    continue
                target = cls._shorthand.get(type(value))
                if target is None:
                    fields = [f.name for f in dataclasses.fields(cls)]
                    raise TypeError(
                        f"{key}={value!r}: {group} is a group of options; set one of them, e.g. "
                        f"{group}__{fields[0]}=... (options: {', '.join(fields)})"
                    )
                path = [group, target]
            node = data
            for depth, part in enumerate(path):
                if not isinstance(node, dict) or part not in node:
                    raise ConfigError(_unknown_option(key, data))
                if depth == len(path) - 1:
                    node[part] = value
                else:
                    node = node[part]
        return GroundingConfig.from_dict(data)

    def save_pretrained(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "GroundingConfig":
        """``folder/grounding.json``, checked (a malformed file is an error); defaults when absent."""
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def for_model(cls, model: str | Path) -> "GroundingConfig":
        """``grounding.json`` of a model folder or hub repo; defaults when it has none."""
        path = Path(model)
        if path.is_dir():
            return cls.from_pretrained(path)
        try:
            from huggingface_hub import hf_hub_download

            folder = Path(hf_hub_download(str(model), CONFIG_NAME)).parent
        except Exception:  # no such file in the repo, or offline: the defaults
            return cls()
        return cls.from_pretrained(folder)


class ConfigError(ValueError):
    """A config value that is not allowed (raised when the config is built)."""


class UnsupportedOption(ValueError):
    """A valid config value this loaded model cannot serve (``proposals="concept"`` without a SAM 3
    segmenter): ``option`` is the config key (``"proposals.mode"``), so a service names the field."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


def _unknown_option(key: str, data: dict[str, Any]) -> str:
    """The error for an unknown option, with the double-underscore spelling when that one exists
    (``sinks_mode`` → ``sinks__mode``)."""
    group, _, leaf = key.partition("_")
    if "." not in key and "__" not in key and isinstance(data.get(group), dict) and leaf in data[group]:
        return f"unknown grounding option {key!r} (did you mean {group}__{leaf}?)"
    return f"unknown grounding option {key!r}"


def _check(name: str, hint: Any, value: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (and normalised: ints → floats for float
    fields, a single value or a list → a tuple for tuple fields)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _check(name, rest[0], value) if len(rest) == 1 else value
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return tuple(_check(f"{name}[{i}]", args[0], v) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return {_check(f"{name} key", args[0], k): _check(f"{name}[{k!r}]", args[1], v) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        out = float(value)
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return out
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or hasattr(value, "__index__")):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and not isinstance(value, hint):
        raise ConfigError(f"{name} must be a {hint.__name__}, got {value!r}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__} must be an object, got {data!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            value = _from_dict(hints[name], value, f"{prefix}{name}.")
        kwargs[name] = value
    return cls(**kwargs)
