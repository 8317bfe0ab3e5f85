"""Engine settings as dataclasses, stored beside a model as ``grounding.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "grounding.json"

# Function words that carry no referent. Inside an expression they get weight 0; appended to the
# prompt they act as attention magnets (RefAM).
STOP_WORDS: frozenset[str] = frozenset(
    """a an the this that these those of on in at to for from by with without and or but nor
    is are was were be been being it its which who whom whose where when while as than then
    into onto upon over under above below near next beside besides between behind before after
    there here some any each every all both either neither one his her their our your my me
    him them us we you he she they i do does did has have had not no yes very too also just
    so such what how why many much""".split()
)


@dataclass
class MagnetConfig:
    """Attention magnets: stop words appended to the expression, then left out of the map."""

    enabled: bool = True
    words: tuple[str, ...] = ("and", "of", "with", "the", "a")
    # Optional colour word appended as one more magnet (RefAM summaries mention one); None = off.
    colour_word: str | None = None
    # Weight of the head noun relative to other content words (1.0 = no emphasis).
    head_noun_weight: float = 2.0
    # Weight of content words in the complement of a relation (the anchor object of "left of the
    # yellow circle", the bench of "on the left of the bench"); 1.0 = no special treatment.
    complement_weight: float = 1.0


@dataclass
class SinkConfig:
    """Global attention sinks: image tokens bright in the map of (nearly) every text token.

    Per block, each text token's column is normalised over image tokens, so uniform attention
    is ``1/N``. An image token is a sink in that block when its share, at the ``quantile`` over
    the valid text tokens, exceeds ``threshold × (1/N)``: it is bright regardless of the word.
    """

    enabled: bool = True
    threshold: float = 8.0
    quantile: float = 0.1
    mode: str = "redirect"  # "suppress" (zero + renormalise) | "redirect" (mass → magnets)
    # Blocks are checked from this fraction of depth on (0.0 = every block).
    min_depth: float = 0.0


@dataclass
class RedistributionConfig:
    """Per image token, renormalise attention over the captured text tokens (magnets included)."""

    enabled: bool = True


@dataclass
class ViewsConfig:
    """AGLA-style prompt-masked views (arXiv 2406.12718), adapted from decoding to grounding.

    ``assembled``: the global map G picks the tokens to keep (top ``keep`` fraction of G after a
    Gaussian blur of ``smooth`` tokens; ``keep=None`` → ``1 − s/2`` with ``s`` the map's match
    score), the rest of the image is filled (``blur`` / ``mean``: re-encoded and re-noised with the
    global pass's seeded noise; ``attention``: same image, but text queries may not attend to
    dropped image keys), a local pass gives L, and
    ``log F = log G + alpha·log(L + lam/N)`` on the support ``G ≥ beta·max G`` (0 elsewhere).
    """

    mode: str = "global"  # "global" | "assembled"
    fill: str = "blur"  # "blur" | "mean" | "attention"
    keep: float | None = None
    smooth: float = 1.0
    alpha: float = 1.0
    beta: float = 0.2
    lam: float = 1.0


@dataclass
class RefineConfig:
    """Edge-aware refinement of the upsampled heatmap (``refine``): a colour guided filter with
    the image as guide, window radius ``radius`` token cells, regulariser ``eps`` (smaller = edges
    followed more closely). Off by default: SAM draws the mask edges; the map-threshold segmenter
    gains most from it. Images with a side over ``max_side`` px are filtered at that size and the
    filter's coefficients upsampled (bounded memory)."""

    enabled: bool = False
    radius: float = 4.0
    eps: float = 0.01
    max_side: int = 512


@dataclass
class PresenceConfig:
    """Is the referent in the image? A logistic model over map features (``presence.FEATURES``),
    fitted by ``python -m grounding calibrate-presence``; ``present = score ≥ threshold`` and a
    non-empty mask. Unfitted (no weights): the score is the map's concentration and ``present``
    only asks for a non-empty mask."""

    weights: dict[str, float] = field(default_factory=dict)
    bias: float = 0.0
    threshold: float = 0.5


@dataclass
class AnswerConfig:
    """Answer grounding (training-free): the map of "question + answer" divided by the map of a
    generic prompt (CARVE-style contrast, arXiv 2509.06461): ``G(Q) / (G(generic) + λ)`` with
    λ the ``percentile`` of the generic map, so regions every prompt lights up are discounted."""

    contrast: bool = True
    generic_prompt: str = "a photo"
    percentile: float = 50.0
    # Use the model folder's trained answer head (``answer_head.safetensors``) when it has one.
    head: bool = True


@dataclass
class GroundingConfig:
    """Everything that decides how a map is made. Defaults are documented in README."""

    # Long side of the image fed to the VAE (rounded to the model's patch multiple).
    resolution: int = 1024
    # Noise levels (flow-matching sigma in (0, 1)); maps are averaged over them.
    timesteps: tuple[float, ...] = (0.3,)
    seed: int = 0
    # Text length the transformer sees (padding included); None = the pipeline's default.
    max_sequence_length: int | None = None
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
    # Map → prompts: fraction of the map's max used to threshold the referent region.
    threshold: float = 0.5
    positive_points: int = 1
    negative_points: int = 0
    max_image_pixels: int = 40_000_000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroundingConfig":
        return _from_dict(cls, data)

    def replace(self, **changes: Any) -> "GroundingConfig":
        """A copy with top-level fields or dotted sub-fields (``"sinks.mode"``) changed."""
        data = self.to_dict()
        for key, value in changes.items():
            node = data
            *parents, leaf = key.replace("__", ".").split(".")
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise ValueError(f"unknown grounding option {key!r}")
            node[leaf] = value
        return GroundingConfig.from_dict(data)

    def save_pretrained(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "GroundingConfig":
        path = Path(folder) / CONFIG_NAME
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else cls()


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _from_dict(type(default), value)
        elif isinstance(default, tuple) or (name == "blocks" and value is not None):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
