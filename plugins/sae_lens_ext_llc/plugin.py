"""Hook implementations of the llc plugin."""

from __future__ import annotations

from sae_lens_ext import hookimpl


@hookimpl
def register_analyses(register):
    """Register the ``llc`` analysis."""
    from .analysis import LLCAnalysis

    register(LLCAnalysis)


@hookimpl
def register_metric_directions(register):
    """Whether higher or lower is better for each LLC metric."""
    from .directions import DIRECTIONS

    register("llc", DIRECTIONS)
