"""Hook implementations of the meta_sae plugin."""

from __future__ import annotations

from sae_lens_ext import hookimpl


@hookimpl
def register_analyses(register):
    """Register the ``meta_sae`` analysis."""
    from .analysis import MetaSAEAnalysis

    register(MetaSAEAnalysis)
