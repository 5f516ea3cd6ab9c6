"""Hook implementations of the tokenized plugin."""

from __future__ import annotations

from sae_lens_ext import hookimpl


@hookimpl
def register_sae_architectures(register):
    """Register the ``tokenized`` SAE-Lens architecture (inference + training)."""
    from .sae import register_architecture

    register_architecture(register)


@hookimpl
def register_analyses(register):
    """Register the ``tokenized`` analysis (token identity of any SAE)."""
    from .analysis import TokenIdentityAnalysis

    register(TokenIdentityAnalysis)


@hookimpl
def register_commands(cli):
    """Add ``sae-lens-ext train-tokenized``."""
    from .command import add_command

    add_command(cli)


@hookimpl
def register_metric_directions(register):
    """Whether higher or lower is better for each token-identity metric."""
    from .directions import DIRECTIONS

    register("tokenized", DIRECTIONS)
