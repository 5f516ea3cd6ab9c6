"""Hook implementations of the llc plugin."""

from __future__ import annotations

from sae_lens_ext import hookimpl


@hookimpl
def register_analyses(register):
    """Register the ``llc`` analysis."""
    from .analysis import LLCAnalysis

    register(LLCAnalysis)
