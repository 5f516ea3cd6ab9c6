"""sae-lens-ext plugin: feature absorption (encoder-vs-decoder, first letter)."""

from .config import AbsorptionConfig
from .discrepancy import DiscrepancyAccumulator, DiscrepancyResult
from .scoring import AbsorptionScores, absorption_scores
from .synthetic import PlantedHierarchy, planted_hierarchy
from .topk import StreamingTopK

__all__ = [
    "AbsorptionConfig",
    "AbsorptionScores",
    "DiscrepancyAccumulator",
    "DiscrepancyResult",
    "PlantedHierarchy",
    "StreamingTopK",
    "absorption_scores",
    "planted_hierarchy",
]
