"""dit-grounding: referring segmentation read out of diffusion-transformer attention (RefAM)."""

from .config import GroundingConfig, MagnetConfig, RedistributionConfig, SinkConfig
from .grounder import AttentionMaps, Grounder
from .result import GroundingResult

__all__ = ["Grounder", "GroundingConfig", "GroundingResult", "AttentionMaps", "MagnetConfig", "SinkConfig",
           "RedistributionConfig"]
