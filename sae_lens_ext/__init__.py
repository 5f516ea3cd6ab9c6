"""sae-lens-ext: analyses for SAE-Lens SAEs as plugins on one pluggy host."""

from .analysis import ActivationBatch, Analysis, AnalysisResult, NoConfig, RunContext
from .hookspecs import hookimpl
from .loading import load_model_for_sae, load_sae
from .releases import Release
from .runner import RunOutput, run
from .saebench import SAEBenchEval, SAEBenchRun, SAEBenchSkip, check_finite

__version__ = "0.1.0"

__all__ = [
    "ActivationBatch",
    "Analysis",
    "AnalysisResult",
    "NoConfig",
    "PublishError",
    "Release",
    "RunContext",
    "RunOutput",
    "SAEBenchEval",
    "SAEBenchRun",
    "SAEBenchSkip",
    "check_finite",
    "hookimpl",
    "load_model_for_sae",
    "load_sae",
    "push_to_hub",
    "run",
    "__version__",
]


def __getattr__(name):
    if name in ("push_to_hub", "PublishError"):
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'sae_lens_ext' has no attribute {name!r}")
