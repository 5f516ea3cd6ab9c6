"""Hook implementations of the absorption plugin."""

from __future__ import annotations

from sae_lens_ext import hookimpl


@hookimpl
def register_analyses(register):
    """Register the ``absorption`` analysis."""
    from .analysis import AbsorptionAnalysis

    register(AbsorptionAnalysis)


@hookimpl
def register_metric_directions(register):
    """Whether higher or lower is better for each absorption metric."""
    from .saebench import DIRECTIONS

    register("absorption", DIRECTIONS)


@hookimpl
def register_saebench_evals(register):
    """The first-letter evaluation as SAEBench's ``absorption_first_letter``."""
    from .saebench import absorption_eval, absorption_warnings

    register("absorption", absorption_eval, absorption_warnings)
