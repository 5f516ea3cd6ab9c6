"""Hook implementations of the MDL plugin."""

from __future__ import annotations

from pathlib import Path

import click

from sae_lens_ext import hookimpl


@hookimpl
def register_analyses(register):
    """Register the ``mdl`` analysis."""
    from .analysis import MDLAnalysis

    register(MDLAnalysis)


@hookimpl
def register_metric_directions(register):
    """Whether higher or lower is better for each MDL metric."""
    from .saebench import DIRECTIONS

    register("mdl", DIRECTIONS)


@hookimpl
def register_saebench_evals(register):
    """Our description length beside SAEBench's ``mdl`` output layout."""
    from .saebench import mdl_eval

    register("mdl", mdl_eval)


@hookimpl
def register_commands(cli):
    """Add ``sae-lens-ext mdl-compare RELEASE ID...``."""

    @cli.command(name="mdl-compare")
    @click.argument("release")
    @click.argument("sae_ids", nargs=-1, required=True)
    @click.option("--n-tokens", type=int, default=32_768, show_default=True)
    @click.option("--tolerance", type=float, default=0.05, show_default=True)
    @click.option("--loss-bound", type=float, default=None, help="max MSE to compete")
    @click.option("--dataset", default=None, help="Hub dataset or local file")
    @click.option("--out", type=click.Path(path_type=Path), default=Path("mdl-compare"))
    def mdl_compare(release, sae_ids, n_tokens, tolerance, loss_bound, dataset, out):
        """Compare the description length of several SAEs of one release."""
        from .compare_command import run_comparison

        table = run_comparison(
            release, list(sae_ids), n_tokens, tolerance, loss_bound, dataset, out
        )
        columns = ["sae", "d_sae", "l0", "precision", "bits_per_token"]
        columns += ["mse_at_precision", "at_ladder_end", "mdl_optimal"]
        click.echo(table[columns].to_string(index=False))
        click.echo(f"Written to {out}")
