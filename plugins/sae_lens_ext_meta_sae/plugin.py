"""Hook implementations of the meta_sae plugin."""

from __future__ import annotations

from sae_lens_ext import hookimpl


@hookimpl
def register_analyses(register):
    """Register the ``meta_sae`` analysis."""
    from .analysis import MetaSAEAnalysis

    register(MetaSAEAnalysis)


@hookimpl
def register_metric_directions(register):
    """Whether higher or lower is better for each meta-SAE metric."""
    from .saebench import DIRECTIONS

    register("meta_sae", DIRECTIONS)


@hookimpl
def register_saebench_evals(register):
    """The meta-SAE as SAEBench's ``meta_structure_decoder_variance`` eval."""
    from .saebench import meta_structure_eval

    register("meta_sae", meta_structure_eval)
