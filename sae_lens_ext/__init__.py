"""sae-lens-ext: analyses for SAE-Lens SAEs as plugins on one pluggy host."""

from .analysis import ActivationBatch, Analysis, AnalysisResult, NoConfig, RunContext
from .hookspecs import hookimpl
from .releases import Release

__version__ = "0.1.0"

__all__ = [
    "ActivationBatch",
    "Analysis",
    "AnalysisResult",
    "NoConfig",
    "Release",
    "RunContext",
    "hookimpl",
    "__version__",
]
