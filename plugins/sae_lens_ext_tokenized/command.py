"""``sae-lens-ext train-tokenized``: train a tokenized SAE (and optionally its baseline)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from .training import TrainingOptions


def resolve_model(name: str | None, device: str):
    """The ``--model`` (default: the demo release's) and its release, if any.

    A registered release brings its own tokens; any other form of
    ``--model`` (TransformerLens name, Hugging Face folder, module:function)
    goes through :func:`sae_lens_ext.load_model`.
    """
    from sae_lens_ext import load_model
    from sae_lens_ext.demo import DEMO_RELEASE
    from sae_lens_ext.plugins import get_registry

    name = name or DEMO_RELEASE
    release = get_registry().releases().get(name)
    if release is not None:
        if release.load_model is None:
            raise click.UsageError(f"release {name!r} ships no model loader")
        return release.load_model(device), release
    return load_model(name, device=device), None


def resolve_dataset(dataset: str | None, release):
    """The ``--dataset`` file, or the release's own token dataset."""
    if dataset is not None:
        return Path(dataset)
    if release is not None and release.load_tokens is not None:
        return release.load_tokens(None)
    raise click.UsageError("pass --dataset (a .safetensors 'tokens' file or a .txt)")


def add_command(cli: click.Group) -> None:
    """Attach ``train-tokenized`` to the root command group."""

    @cli.command(name="train-tokenized")
    @click.option(
        "--model",
        default=None,
        help="TransformerLens name, Hugging Face folder, module:function or "
        "release (default: the demo)",
    )
    @click.option(
        "--hook", "hook_name", default="blocks.0.hook_resid_post", show_default=True
    )
    @click.option(
        "--dataset",
        default=None,
        help=".safetensors (key 'tokens') or .txt; default: the release's tokens",
    )
    @click.option(
        "--out",
        type=click.Path(path_type=Path),
        required=True,
        help="folder for the SAE(s)",
    )
    @click.option(
        "--architecture",
        type=click.Choice(["topk", "standard", "jumprelu"]),
        default="topk",
        show_default=True,
    )
    @click.option(
        "--lookup",
        type=click.Choice(["token", "upstream_sae", "both"]),
        default="token",
        show_default=True,
        help="tables keyed on the token, an upstream SAE's latents, or both",
    )
    @click.option(
        "--upstream",
        default=None,
        help="the upstream SAE, RELEASE/ID (e.g. sae-lens-ext/demo/resid0-topk-1024) "
        "or an SAE-Lens folder; needed by --lookup upstream_sae|both",
    )
    @click.option(
        "--upstream-key",
        type=click.Choice(["codes", "top1"]),
        default="codes",
        show_default=True,
        help="sum_j g_j U[j], or the row of the top upstream latent",
    )
    @click.option(
        "--upstream-init",
        type=click.Choice(["lstsq", "zeros"]),
        default="lstsq",
        show_default=True,
    )
    @click.option("--d-sae", type=int, default=TrainingOptions.d_sae, show_default=True)
    @click.option("--k", type=int, default=TrainingOptions.k, show_default=True)
    @click.option(
        "--l1",
        type=float,
        default=TrainingOptions.l1_coefficient,
        show_default=True,
        help="L1 coefficient (standard)",
    )
    @click.option(
        "--l0",
        type=float,
        default=TrainingOptions.l0_coefficient,
        show_default=True,
        help="L0 coefficient (jumprelu)",
    )
    @click.option(
        "--pair-buckets",
        type=int,
        default=0,
        show_default=True,
        help="rows of the hashed token-pair table (0: none)",
    )
    @click.option(
        "--apply-lookup-to-input",
        is_flag=True,
        help="encoder sees x minus the table term",
    )
    @click.option(
        "--init",
        type=click.Choice(["unigram", "mean", "zeros"]),
        default=TrainingOptions.init,
        show_default=True,
    )
    @click.option("--steps", type=int, default=TrainingOptions.steps, show_default=True)
    @click.option(
        "--batch-size", type=int, default=TrainingOptions.batch_size, show_default=True
    )
    @click.option("--lr", type=float, default=TrainingOptions.lr, show_default=True)
    @click.option(
        "--lookup-lr",
        type=float,
        default=TrainingOptions.lookup_lr,
        show_default=True,
        help="the tables' learning rate (0: the same as --lr)",
    )
    @click.option("--device", default="cpu", show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option(
        "--autocast",
        is_flag=True,
        help="bf16 autocast (fast on CPUs with AVX-512 BF16 or AMX)",
    )
    @click.option(
        "--baseline", is_flag=True, help="also train the plain SAE and compare"
    )
    def train_tokenized(model, hook_name, dataset, out, architecture, lookup, upstream,
                        upstream_key, upstream_init, d_sae, k, l1, l0, pair_buckets,
                        apply_lookup_to_input, init, steps, batch_size, lr, lookup_lr,
                        device, seed, autocast, baseline):  # fmt: skip
        """Train a tokenized SAE with SAE-Lens's SAETrainer; save it in SAE-Lens format."""
        from .report import write_comparison, write_single
        from .training import resolve_upstream

        if lookup != "token" and not upstream:
            raise click.UsageError(
                f"--lookup {lookup} needs --upstream RELEASE/ID (the upstream SAE)"
            )
        lm, release = resolve_model(model, device)
        tokens = resolve_dataset(dataset, release)
        try:
            options = TrainingOptions(
                d_sae=d_sae, k=k, base_architecture=architecture, l1_coefficient=l1,
                l0_coefficient=l0, lookup=lookup, upstream=upstream,
                upstream_key=upstream_key, upstream_init=upstream_init,
                pair_buckets=pair_buckets, apply_lookup_to_input=apply_lookup_to_input,
                init=init, steps=steps, batch_size=batch_size, lr=lr,
                lookup_lr=lookup_lr or None, device=device, seed=seed, autocast=autocast,
            )  # fmt: skip
            if lookup != "token":  # load and check the upstream SAE before training
                upstream_sae = resolve_upstream(options, lm, hook_name)[0]
                options = dataclasses.replace(
                    options, upstream=upstream_sae, upstream_reference=upstream
                )
        except (ValueError, RuntimeError) as exc:  # RuntimeError: SAELoadError
            raise click.UsageError(str(exc)) from exc
        if baseline:
            summary = write_comparison(lm, hook_name, tokens, options, out)
        else:
            summary = write_single(lm, hook_name, tokens, options, out)
        click.echo(summary)
