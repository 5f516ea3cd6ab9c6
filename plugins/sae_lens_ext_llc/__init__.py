"""sae-lens-ext plugin: the local learning coefficient (Lau et al. 2023).

``estimate_llc`` samples any torch module's weights near w* with batched
localised SGLD (all chains in one vectorised computation) and returns the
estimate, its standard error, loss traces and diagnostics.
"""

from .diagnostics import Finding, LLCDiagnostics
from .estimator import LLCResult, default_nbeta, estimate_llc

__all__ = [
    "Finding",
    "LLCDiagnostics",
    "LLCResult",
    "default_nbeta",
    "estimate_llc",
]
