"""The ``mdl`` analysis on the host's shared pass, and SAE comparison."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
from matplotlib.figure import Figure

from sae_lens_ext import Analysis, AnalysisResult

from .description_length import DescriptionLength, MDLAccumulator, MDLConfig


class MDLAnalysis(Analysis):
    """Description length of the SAE's code at the precision the loss tolerates."""

    name = "mdl"
    title = "MDL: description length"
    description = "bits per token of the latent code (Ayonrinde et al. 2024)"
    config_class = MDLConfig
    needs = frozenset({"activations"})
    headline_metrics = ("bits_per_token",)

    def __init__(self, config: MDLConfig, context):
        super().__init__(config, context)
        model = context.model if config.loss == "ce" else None
        self.accumulator = MDLAccumulator(
            context.sae, config, model=model, hook_name=context.hook_name
        )

    def update(self, batch) -> None:
        """Histogram this batch's quantised activations at every precision."""
        self.accumulator.update(batch.sae_in, batch.feature_acts, batch.token_context)

    def finish(self) -> AnalysisResult:
        """Choose the precision and report bits per token."""
        result = self.accumulator.result()
        return AnalysisResult(
            metrics=result.metrics(),
            tables={"latents": result.latents, "precisions": result.precisions},
            plots={
                "precision_sweep": precision_plot(result),
                "rate_distortion": rate_distortion_plot({"": result}),
            },
            card=card_text(result),
        )


def precision_plot(result: DescriptionLength) -> Figure:
    """Bits per token and loss against precision, the chosen one marked."""
    table = result.precisions
    loss_column = "ce_loss" if result.loss_kind == "ce" else "mse"
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(table["precision"], table["bits_per_token"], "o-", color="#3b6ea5")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("precision (bin width)")
    ax.set_ylabel("bits per token", color="#3b6ea5")
    ax.axvline(result.precision, color="grey", linestyle="--")
    twin = ax.twinx()
    twin.plot(table["precision"], table[loss_column], "s-", color="#c0504d")
    twin.set_ylabel(loss_column, color="#c0504d")
    ax.set_title(
        f"{result.bits_per_token:.1f} bits/token at precision {result.precision:g}"
    )
    fig.tight_layout()
    return fig


def card_text(result: DescriptionLength) -> str:
    """The model-card section for one SAE."""
    met = "" if result.tolerance_met else " (no precision met the tolerance)"
    increase = "relative increase" if result.loss_kind == "mse" else "increase (nats)"
    text = (
        f"Description length of the latent code: **{result.bits_per_token:.2f} bits "
        f"per token** at precision {result.precision:g}{met}, where the "
        f"{result.loss_kind} is {result.loss:.4g} (unquantised "
        f"{result.unquantised_loss:.4g}; {increase} {result.loss_increase:.3g} "
        f"+/- {result.loss_increase_se:.2g} against a tolerance of "
        f"{result.tolerance:g}). "
        f"The precision was searched on a ladder of {len(result.precisions)} "
        f"precisions {_ladder_text(result)}; over bootstrap resamples of the "
        f"{result.loss_batches} measured batches the choice lies in "
        f"[{result.precision_low:g}, {result.precision_high:g}] "
        f"({result.precision_stability:.0%} agree). L0 is {result.l0:.1f}; the "
        f"fixed-length bound L0 x (log2 d_sae + bits per value) is "
        f"{result.naive_bound_bits:.1f} bits. Method: Ayonrinde, Pearce, Sharkey "
        "2024, entropy of each latent's quantised activations summed over latents; "
        "`rate_distortion.png` and the `precisions` table give bits against loss "
        "at every precision."
    )
    if result.per_latent_bits is not None:
        text += (
            f"\n\nWith a precision per latent (allocated by marginal bits saved per "
            f"unit of MSE), the code takes **{result.per_latent_bits:.2f} bits per "
            f"token** at a predicted relative MSE increase of "
            f"{result.per_latent_predicted_increase:.3g} (the additive model "
            f"predicts {result.uniform_predicted_increase:.3g} for the single "
            "precision above); per-latent precisions are in the `latents` table."
        )
    for warning in result.warnings:
        text += f"\n\n**Warning:** {warning}."
    return text


def _ladder_text(result: DescriptionLength) -> str:
    table = result.precisions
    span = f"{table['precision'].min():g} to {table['precision'].max():g}"
    if result.ladder_placement == "scale":
        return f"({span}) placed from the activations' own scale"
    if result.ladder_placement == "fixed":
        return f"(the fixed precision {span.split(' ')[0]})"
    return f"({span}) in absolute units (mdl.finest_precision)"


def rate_distortion_plot(results: dict[str, DescriptionLength]) -> Figure:
    """Bits per token against loss along each SAE's ladder, choices circled.

    One curve per SAE (``results`` maps a label to a result; one unlabelled
    result gives the plot of a single run, with its tolerance marked).
    """
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    kind = next(iter(results.values())).loss_kind
    column = "ce_loss" if kind == "ce" else "mse"
    for label, result in results.items():
        table = result.precisions
        (line,) = ax.plot(
            table[column], table["bits_per_token"], "o-", ms=3, label=label or None
        )
        chosen = table[table["chosen"]]
        ax.scatter(
            chosen[column],
            chosen["bits_per_token"],
            s=120,
            facecolors="none",
            edgecolors=line.get_color(),
        )
        if len(results) == 1:
            for _, row in table.iterrows():
                ax.annotate(
                    f"{row['precision']:.3g}",
                    (row[column], row["bits_per_token"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            clean = result.unquantised_loss
            bound = (
                clean + result.tolerance
                if kind == "ce"
                else clean * (1 + result.tolerance)
            )
            ax.axvline(clean, color="grey", linestyle=":", label="unquantised")
            ax.axvline(bound, color="#c0504d", linestyle="--", label="tolerance")
    ax.set_xscale("log")
    ax.set_xlabel(f"{column} with the code quantised")
    ax.set_ylabel("description length (bits per token)")
    ax.set_title("rate-distortion along the precision ladder (circled: chosen)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def describe_saes(
    saes: dict[str, object], activation_batches: Iterable[torch.Tensor], **options
) -> dict[str, DescriptionLength]:
    """Description length of several SAEs on the same activations, one pass."""
    config = MDLConfig(**options)
    accumulators = {name: MDLAccumulator(sae, config) for name, sae in saes.items()}
    for sae_in in activation_batches:
        for name, acc in accumulators.items():
            sae = saes[name]
            with torch.no_grad():
                feats = sae.encode(sae_in.to(sae.W_dec.dtype))
            acc.update(sae_in, feats)
    return {name: acc.result() for name, acc in accumulators.items()}


def comparison_table(
    results: dict[str, DescriptionLength],
    saes: dict[str, object],
    loss_bound: float | None = None,
) -> pd.DataFrame:
    """One row per SAE; the fewest bits within ``loss_bound`` is ``mdl_optimal``."""
    rows = [
        {"sae": name, "d_sae": saes[name].cfg.d_sae, **result.metrics()}
        for name, result in results.items()
    ]
    table = pd.DataFrame(rows)
    eligible = table["mse_at_precision"] <= (
        loss_bound if loss_bound is not None else float("inf")
    )
    table["mdl_optimal"] = False
    if eligible.any():
        best = table.loc[eligible, "bits_per_token"].idxmin()
        table.loc[best, "mdl_optimal"] = True
    return table


def curves_table(results: dict[str, DescriptionLength]) -> pd.DataFrame:
    """Every SAE's ladder (bits and loss per precision) in long form."""
    return pd.concat(
        [result.precisions.assign(sae=name) for name, result in results.items()],
        ignore_index=True,
    )


def compare_saes(
    saes: dict[str, object],
    activation_batches: Iterable[torch.Tensor],
    *,
    loss_bound: float | None = None,
    **options,
) -> tuple[pd.DataFrame, Figure]:
    """Description length of several SAEs on the same activations, one pass.

    ``saes`` maps a name to an SAE (all on the same hook). The row with the
    fewest bits among SAEs whose MSE at their chosen precision is within
    ``loss_bound`` (all, if None) is marked ``mdl_optimal``.
    """
    results = describe_saes(saes, activation_batches, **options)
    table = comparison_table(results, saes, loss_bound)
    return table, comparison_plot(table, loss_bound)


def comparison_plot(table: pd.DataFrame, loss_bound: float | None) -> Figure:
    """Description length against reconstruction error, one point per SAE."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter(table["mse_at_precision"], table["bits_per_token"], color="#3b6ea5")
    for _, row in table.iterrows():
        ax.annotate(row["sae"], (row["mse_at_precision"], row["bits_per_token"]))
    best = table[table["mdl_optimal"]]
    ax.scatter(
        best["mse_at_precision"],
        best["bits_per_token"],
        s=160,
        facecolors="none",
        edgecolors="#c0504d",
        label="MDL-optimal",
    )
    if loss_bound is not None:
        ax.axvline(loss_bound, color="grey", linestyle="--", label="loss bound")
    ax.set_xlabel("MSE at chosen precision")
    ax.set_ylabel("description length (bits per token)")
    ax.legend()
    fig.tight_layout()
    return fig
