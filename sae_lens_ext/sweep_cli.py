"""The ``sae-lens-ext sweep`` command: many SAEs of a release, shared model passes."""

from __future__ import annotations

from pathlib import Path

import click

from .models import MODEL_HELP
from .positions import HELP as POSITIONS_HELP


def make_sweep_command(registry) -> click.Command:
    """Build ``sweep`` with the run's analysis options (``--<analysis>.<field>``)."""
    from .cli import analysis_options, pop_config, selection_and_data_options

    params = [
        click.Option(["--release"], default=None, help="release name or folder"),
        click.Option(
            ["--sae-ids"],
            default=None,
            help="comma-separated ids or glob patterns ('resid0-topk-*'); "
            "default: every SAE of the release",
        ),
        *selection_and_data_options(),
        click.Option(
            ["--model"], default=None, help=f"{MODEL_HELP} [default: the metadata's]"
        ),
        click.Option(["--out"], type=click.Path(path_type=Path), help="sweep folder"),
        click.Option(
            ["--device"],
            default="auto",
            show_default=True,
            help="auto (cuda when there is a GPU), cpu or cuda",
        ),
        click.Option(["--seed"], type=int, default=0, show_default=True),
        click.Option(["--positions"], default=None, help=POSITIONS_HELP),
        click.Option(
            ["--executor"],
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="local: in this process; ray: one Ray task per group of SAEs",
        ),
        click.Option(
            ["--ray-address"],
            default=None,
            help="Ray cluster to join (auto, ray://host:10001); default: the "
            "cluster of `ray job submit`, else a local one",
        ),
        click.Option(
            ["--memory-budget-gb"],
            type=float,
            default=None,
            help="split groups whose estimated memory exceeds this "
            "[default: half the free memory]",
        ),
        click.Option(
            ["--overwrite"],
            is_flag=True,
            help="run every SAE again, also with settings that differ from the "
            "folder's earlier sweep",
        ),
    ]
    options, dests = analysis_options(registry)
    params += options

    def callback(**kwargs):
        from .sweep import sweep

        config = pop_config(kwargs, dests)
        output = sweep(
            kwargs["release"],
            kwargs["sae_ids"],
            plugins=list(kwargs["plugins"]) or None,
            config=config,
            dataset=kwargs["dataset"],
            n_tokens=kwargs["n_tokens"],
            batch_size=kwargs["batch_size"],
            device=kwargs["device"],
            seed=kwargs["seed"],
            positions=kwargs["positions"],
            model=kwargs["model"],
            executor=kwargs["executor"],
            ray_address=kwargs["ray_address"],
            out_dir=kwargs["out"],
            overwrite=kwargs["overwrite"],
            memory_budget_gb=kwargs["memory_budget_gb"],
        )
        print_sweep(output)
        if output.failures:
            raise click.ClickException(
                f"{len(output.failures)} of {len(output.comparison)} SAEs failed "
                "(errors in sweep.json and their run directories; rerun the same "
                "command to retry only them): "
                + "; ".join(f"{k}: {v}" for k, v in output.failures.items())
            )

    return click.Command(
        "sweep",
        params=params,
        callback=callback,
        help="Run the enabled analyses on many SAEs of a release, one model pass "
        "per batch for all SAEs of a model, and compare them.",
    )


def print_sweep(output) -> None:
    """Print where the sweep is, what ran and the comparison's headline columns."""
    click.echo(
        f"Sweep written to {output.sweep_dir}: {len(output.comparison)} SAEs in "
        f"{len(output.groups)} group(s) run, {len(output.skipped)} already complete"
    )
    columns = [
        c
        for c in ("sae_id", "width", "l0", "status", "mdl.bits_per_token")
        if c in output.comparison
    ]
    click.echo(output.comparison[columns].to_string(index=False))
