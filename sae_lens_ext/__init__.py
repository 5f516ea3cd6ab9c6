"""sae-lens-ext: analyses for SAE-Lens SAEs as plugins on one pluggy host."""

from .analysis import ActivationBatch, Analysis, AnalysisResult, NoConfig, RunContext
from .hookspecs import hookimpl
from .loading import load_model_for_sae, load_sae
from .models import load_model
from .reconstruction import (
    CodeMap,
    UnsupportedSAEError,
    at_positions,
    code_map,
    flat_rows,
    position_mask,
    require_reconstruction,
    select_head,
    splice,
)
from .releases import Release
from .runner import RunOutput, run
from .saebench import SAEBenchEval, SAEBenchRun, SAEBenchSkip, check_finite
from .sweep import SweepOutput, sweep
from .threads import machine_is_busy, thread_limit

__version__ = "0.1.0"

__all__ = [
    "ActivationBatch",
    "Analysis",
    "AnalysisResult",
    "CodeMap",
    "NoConfig",
    "PublishError",
    "Release",
    "RunContext",
    "RunOutput",
    "SAEBenchEval",
    "SAEBenchRun",
    "SAEBenchSkip",
    "SweepOutput",
    "UnsupportedSAEError",
    "at_positions",
    "check_finite",
    "code_map",
    "flat_rows",
    "hookimpl",
    "load_model",
    "load_model_for_sae",
    "load_sae",
    "machine_is_busy",
    "position_mask",
    "push_to_hub",
    "require_reconstruction",
    "run",
    "select_head",
    "splice",
    "sweep",
    "thread_limit",
    "__version__",
]


def __getattr__(name):
    if name in ("push_to_hub", "PublishError"):
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'sae_lens_ext' has no attribute {name!r}")
