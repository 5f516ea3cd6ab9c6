"""Hook implementations of the absorption plugin."""

from __future__ import annotations

from sae_lens_ext import hookimpl


@hookimpl
def register_analyses(register):
    """Register the ``absorption`` analysis."""
    from .analysis import AbsorptionAnalysis

    register(AbsorptionAnalysis)
