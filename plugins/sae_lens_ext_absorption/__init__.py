"""sae-lens-ext plugin: feature absorption (encoder-vs-decoder, first letter)."""

from .analysis import AbsorptionAnalysis
from .boundaries import (
    BoundaryConvention,
    UnknownConvention,
    WordStartLetters,
    detect_convention,
)
from .config import AbsorptionConfig
from .discrepancy import DiscrepancyAccumulator, DiscrepancyResult
from .first_letter import FirstLetterResult, first_letter_absorption
from .letters import LetterSampler, LettersUnavailable, first_letter
from .report import AbsorptionAccumulator, AbsorptionReport, absorption_report
from .scoring import AbsorptionScores, absorption_scores
from .synthetic import (
    PlantedHierarchy,
    PlantedLetters,
    WordTokenizer,
    planted_hierarchy,
    planted_letters,
)
from .topk import StreamingTopK

__all__ = [
    "BoundaryConvention",
    "LettersUnavailable",
    "UnknownConvention",
    "WordStartLetters",
    "detect_convention",
    "AbsorptionAccumulator",
    "AbsorptionAnalysis",
    "AbsorptionConfig",
    "AbsorptionReport",
    "FirstLetterResult",
    "LetterSampler",
    "PlantedLetters",
    "WordTokenizer",
    "absorption_report",
    "first_letter",
    "first_letter_absorption",
    "planted_letters",
    "AbsorptionScores",
    "DiscrepancyAccumulator",
    "DiscrepancyResult",
    "PlantedHierarchy",
    "StreamingTopK",
    "absorption_scores",
    "planted_hierarchy",
]
