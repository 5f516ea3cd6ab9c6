"""sae-lens-ext plugin: MDL scoring of SAEs (Ayonrinde, Pearce, Sharkey 2024)."""

from .allocation import Allocation, allocate_precisions
from .analysis import (
    MDLAnalysis,
    compare_saes,
    comparison_table,
    curves_table,
    describe_saes,
    rate_distortion_plot,
)
from .description_length import (
    DescriptionLength,
    MDLAccumulator,
    MDLConfig,
    description_length,
)
from .entropy import binary_entropy, entropy_bits
from .histograms import QuantisedHistograms
from .ladder import activation_scale, bootstrap_choices, choice_on_ladder

__all__ = [
    "Allocation",
    "activation_scale",
    "allocate_precisions",
    "bootstrap_choices",
    "choice_on_ladder",
    "comparison_table",
    "curves_table",
    "describe_saes",
    "rate_distortion_plot",
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
