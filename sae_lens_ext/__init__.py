"""sae-lens-ext: analyses for SAE-Lens SAEs as plugins on one pluggy host."""

from .analysis import ActivationBatch, Analysis, AnalysisResult, NoConfig, RunContext
from .hookspecs import hookimpl
from .loading import load_model_for_sae, load_sae
from .models import load_model
from .releases import Release
from .runner import RunOutput, run
from .saebench import SAEBenchEval, SAEBenchRun, SAEBenchSkip, check_finite
from .threads import machine_is_busy, thread_limit

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
    "load_model",
    "load_model_for_sae",
    "load_sae",
    "machine_is_busy",
    "push_to_hub",
    "run",
    "thread_limit",
    "__version__",
]


def __getattr__(name):
    if name in ("push_to_hub", "PublishError"):
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'sae_lens_ext' has no attribute {name!r}")
