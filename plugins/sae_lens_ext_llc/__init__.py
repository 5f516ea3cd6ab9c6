"""sae-lens-ext plugin: the local learning coefficient (Lau et al. 2023).

``estimate_llc`` samples any torch module's weights near w* with batched
localised SGLD (all chains in one vectorised computation) and returns the
estimate, its standard error, loss traces and diagnostics (stationarity, MALA
acceptance, a Lanczos saddle check at w*); ``calibrate_llc`` finds a step size
and run length whose estimate can be trusted, widening its grid within a
budget; ``estimate_sae_llc`` and the ``llc`` analysis calibrate, then apply
it to an SAE-Lens SAE on its own activations.
"""

from .analysis import LLCAnalysis, LLCConfig
from .calibration import CalibrationResult, calibrate_llc
from .curvature import CurvatureReport
from .diagnostics import Finding, LLCDiagnostics
from .estimator import LLCResult, default_nbeta, estimate_llc
from .sae import estimate_sae_llc, sae_loss_fn

__all__ = [
    "CalibrationResult",
    "CurvatureReport",
    "Finding",
    "LLCAnalysis",
    "LLCConfig",
    "LLCDiagnostics",
    "LLCResult",
    "calibrate_llc",
    "default_nbeta",
    "estimate_llc",
    "estimate_sae_llc",
    "sae_loss_fn",
]
