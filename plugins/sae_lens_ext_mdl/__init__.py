"""sae-lens-ext plugin: MDL scoring of SAEs (Ayonrinde, Pearce, Sharkey 2024)."""

from .analysis import MDLAnalysis, compare_saes
from .description_length import (
    DescriptionLength,
    MDLAccumulator,
    MDLConfig,
    description_length,
)
from .entropy import binary_entropy, entropy_bits
from .histograms import QuantisedHistograms

__all__ = [
    "DescriptionLength",
    "MDLAccumulator",
    "MDLAnalysis",
    "MDLConfig",
    "QuantisedHistograms",
    "binary_entropy",
    "compare_saes",
    "description_length",
    "entropy_bits",
]
