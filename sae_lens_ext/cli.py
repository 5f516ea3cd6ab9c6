"""The ``sae-lens-ext`` command line.

``run`` takes one option per field of every installed analysis's config
dataclass, spelled ``--<analysis>.<field>`` (``--mdl.tolerance 0.01``);
``--help`` lists them.  Plugins add commands through ``register_commands``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
import warnings
from pathlib import Path

import click

from .models import MODEL_HELP
from .plugins import ENV_ENABLED, get_registry, resolve_enabled
from .positions import HELP as POSITIONS_HELP
from .presets import preset_config, preset_names
from .runner import DEFAULT_N_TOKENS, config_fields

_CLICK_TYPES = {int: click.INT, float: click.FLOAT, bool: click.BOOL, str: click.STRING}


@click.group()
@click.version_option(package_name="sae-lens-ext")
def cli():
    """Analyses for SAE-Lens SAEs, as plugins: run, list, publish."""


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option(
    "--plugins", "-p", "selection", multiple=True, help="selection to show as enabled"
)
def plugins_command(as_json, selection):
    """List installed plugins: name, version, distribution, hooks, enabled."""
    registry = get_registry()
    enabled = set(
        resolve_enabled(
            list(selection) or None, registry.plugin_names(), registry.load_errors()
        )
    )
    rows = []
    for info in registry.info():
        row = dict(info.__dict__)
        row["enabled"] = info.error is None and info.name in enabled
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "enabled" if row["enabled"] else "disabled"
        if row["error"]:
            state = f"FAILED to load: {row['error']}"
        click.echo(
            f"{row['name']} {row['version'] or ''} ({row['distribution'] or '?'}): {state}"
        )
        if row["hooks"]:
            click.echo(f"  hooks: {', '.join(row['hooks'])}")
        if row["analyses"]:
            click.echo(f"  analyses: {', '.join(row['analyses'])}")
        for problem in row["problems"]:
            click.echo(f"  WARNING: {problem}")


@cli.command(name="releases")
def releases_command():
    """List releases registered by plugins and their SAE ids."""
    for name, release in sorted(get_registry().releases().items()):
        click.echo(f"{name}: {release.description}")
        for sae_id in release.saes:
            mark = " (default)" if sae_id == release.default_sae_id else ""
            click.echo(f"  {sae_id}{mark}")


@cli.command(name="push")
@click.argument(
    "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="create the repo as private")
@click.option("--revision", default=None, help="branch to push to")
@click.option("--message", "commit_message", default=None, help="commit message")
@click.option("--prefix", default=None, help="folder in the repo for this run")
@click.option(
    "--allow-incomplete",
    is_flag=True,
    help="publish a failed or interrupted run (never one still running)",
)
def push_command(
    run_dir, repo_id, private, revision, commit_message, prefix, allow_incomplete
):
    """Publish a run or sweep directory to the Hugging Face Hub (token from HF_TOKEN or login)."""
    from .hub import push_to_hub
    from .sweep_hub import is_sweep_dir, push_sweep

    push = push_sweep if is_sweep_dir(run_dir) else push_to_hub
    result = push(
        run_dir,
        repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        prefix=prefix,
        allow_incomplete=allow_incomplete,
    )
    if result.commit is None:
        click.echo(f"{result} is already up to date: no commit made")
    else:
        click.echo(f"Pushed {run_dir} to {result}")


def make_run_command(registry) -> click.Command:
    """Build ``run`` with one option per installed analysis config field."""
    params = [
        click.Option(
            ["--release"], default=None, help="release name, repo id or folder"
        ),
        click.Option(["--sae-id"], default=None, help="SAE id within the release"),
        click.Option(
            ["--model"],
            default=None,
            help=f"{MODEL_HELP} [default: the SAE's metadata]",
        ),
        click.Option(
            ["--no-model"], is_flag=True, help="weights-only: skip model analyses"
        ),
        click.Option(["--positions"], default=None, help=POSITIONS_HELP),
        click.Option(["--out"], type=click.Path(path_type=Path), help="run directory"),
        *selection_and_data_options(),
        click.Option(["--device"], default="cpu", show_default=True),
        click.Option(["--seed"], type=int, default=0, show_default=True),
        click.Option(
            ["--seeds"],
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="run seeds seed..seed+N-1, report mean ± std (each in --out/seed-S)",
        ),
        click.Option(
            ["--preset"],
            type=click.Choice(preset_names()),
            default=None,
            help="run at another tool's settings (saebench: SAEBench's); "
            "options given explicitly win",
        ),
        click.Option(
            ["--cache-activations"], type=click.Path(path_type=Path), default=None
        ),
        click.Option(
            ["--overwrite"], is_flag=True, help="write into a non-empty --out"
        ),
        click.Option(
            ["--push-to-hub"], default=None, help="repo id to publish the run to"
        ),
        click.Option(["--push-prefix"], default=None, help="folder in the repo"),
        click.Option(["--push-private"], is_flag=True, help="create the repo private"),
    ]
    options, dests = analysis_options(registry)
    params += options

    def callback(**kwargs):
        from .seeds import seeded_run

        config = pop_config(kwargs, dests)
        config = preset_config(kwargs["preset"], config, kwargs["plugins"] or None)
        output = seeded_run(kwargs["seeds"])(
            kwargs["release"],
            kwargs["sae_id"],
            plugins=list(kwargs["plugins"]) or None,
            out_dir=kwargs["out"],
            config=config,
            dataset=kwargs["dataset"],
            n_tokens=kwargs["n_tokens"],
            batch_size=kwargs["batch_size"],
            device=kwargs["device"],
            seed=kwargs["seed"],
            model=kwargs["model"],
            no_model=kwargs["no_model"],
            positions=kwargs["positions"],
            cache_dir=kwargs["cache_activations"],
            overwrite=kwargs["overwrite"],
            push_to_hub=kwargs["push_to_hub"],
            push_options={
                "prefix": kwargs["push_prefix"],
                "private": kwargs["push_private"],
            },
        )
        print_run(output)

    return click.Command(
        "run",
        params=params,
        callback=callback,
        help="Run the enabled analyses on one SAE (default: the embedded demo).",
    )


def selection_and_data_options() -> list[click.Option]:
    """``--plugins``, ``--dataset``, ``--n-tokens`` and ``--batch-size`` (run, sweep)."""
    return [
        click.Option(
            ["--plugins", "-p"],
            multiple=True,
            help=f"plugins to enable (mdl,absorption) or disable (no:llc); "
            f"default from ${ENV_ENABLED} or all",
        ),
        click.Option(
            ["--dataset"], default=None, help="Hub dataset or .safetensors/.txt"
        ),
        click.Option(
            ["--n-tokens"], type=int, default=DEFAULT_N_TOKENS, show_default=True
        ),
        click.Option(["--batch-size"], type=int, default=32, show_default=True),
    ]


def analysis_options(registry) -> tuple[list[click.Option], dict]:
    """One ``--<analysis>.<field>`` option per installed analysis config field.

    Returns the options and ``{dest: (analysis, field)}`` for :func:`pop_config`.
    """
    params, dests = [], {}
    for analysis_name, (_, cls) in sorted(registry.analyses().items()):
        for fld, annotation in config_fields(cls):
            dest = f"{analysis_name}__{fld.name}"
            dests[dest] = (analysis_name, fld.name)
            default = (
                fld.default if fld.default is not dataclasses.MISSING else "(computed)"
            )
            params.append(
                click.Option(
                    [f"--{analysis_name}.{fld.name}", dest],
                    type=click_type(annotation),
                    default=None,
                    help=f"{fld.metadata.get('help', '')} [default: {default}]".strip(),
                )
            )
    return params, dests


def pop_config(kwargs: dict, dests: dict) -> dict[str, dict]:
    """Take the analysis options given out of ``kwargs`` as a ``config`` mapping."""
    config: dict[str, dict] = {}
    for dest, (analysis_name, field_name) in dests.items():
        value = kwargs.pop(dest)
        if value is not None:
            config.setdefault(analysis_name, {})[field_name] = value
    return config


def click_type(annotation) -> click.ParamType:
    """The click parameter type for a config field's annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return click_type(inner[0]) if len(inner) == 1 else click.STRING
    return _CLICK_TYPES.get(annotation, click.STRING)


def print_run(output) -> None:
    """Print a run's headline metrics and where its files are."""
    summary = output.summary
    click.echo(f"Run written to {output.run_dir} ({summary.get('duration_s', '?')} s)")
    for name, entry in summary["analyses"].items():
        if "skipped" in entry:
            click.echo(f"  {name}: skipped ({entry['skipped']})")
            continue
        metrics = entry.get("metrics", {})
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in list(metrics.items())[:8]
        )
        click.echo(f"  {name}: {shown}")
        for key, value in metrics.items():
            if key.endswith("warning"):
                click.echo(f"  {name}: WARNING: {value}")


def show_run_warning(message, category, filename, lineno, file=None, line=None):
    """Print a run's warnings as one line; other warnings as Python does."""
    from .runner import RunWarning

    if issubclass(category, RunWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        _show_python_warning(message, category, filename, lineno, file, line)


_show_python_warning = warnings.showwarning


def build_cli() -> click.Group:
    """The root group with ``run`` and every plugin's commands attached."""
    registry = get_registry()
    if "run" not in cli.commands:
        cli.add_command(make_run_command(registry))
        from .sweep_cli import make_sweep_command

        cli.add_command(make_sweep_command(registry))
        registry.hook.register_commands(cli=cli)
    return cli


def main() -> None:
    """Entry point of the ``sae-lens-ext`` console script.

    Exit status: 0 on success, 1 on an error (the message says what to fix),
    130 when Ctrl-C interrupted a run.
    """
    warnings.showwarning = show_run_warning
    try:
        build_cli()(standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            reason = str(exc.__cause__) or "interrupted"
            click.echo(f"Error: {reason}", err=True)
            sys.exit(130)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ValueError, RuntimeError, OSError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
