"""Zero-shot referring segmentation read out of diffusion-transformer attention.

Layout by pipeline stage (dependencies point one way: serving → pipeline → segment → readout →
backends; see docs/architecture.md): ``backends`` (backbones, capture), ``readout`` (tokens, maps,
views, answer contrast, presence), ``segment`` (prompts, refinement, segmenters), ``pipeline``
(``Grounder``, video), ``serving`` (schema, engine, gRPC, UI, settings).
"""

from .config import GroundingConfig, MagnetConfig, RedistributionConfig, SinkConfig
from .pipeline.grounder import AttentionMaps, Grounder
from .pipeline.result import GroundingResult

__all__ = [
    "Grounder",
    "AttentionMaps",
    "GroundingResult",
    "GroundingConfig",
    "MagnetConfig",
    "SinkConfig",
    "RedistributionConfig",
]
