"""The ``meta_sae`` analysis: train a meta-SAE on the run's SAE and decompose it."""

from __future__ import annotations

import dataclasses

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sae_lens_ext import ActivationBatch, Analysis, AnalysisResult

from .config import MetaSAEConfig
from .decompose import MetaDecomposition, decompose
from .meta_sae import fit_meta_sae
from .trainer import TrainingLog

LARGEST_SHOWN = 5
SAMPLING = {
    "uniform": "each row once per epoch",
    "replacement": "batches drawn uniformly with replacement",
    "frequency": "rows drawn in proportion to their latent's firing frequency",
}
MEMBERS_SHOWN = 6


class MetaSAEAnalysis(Analysis):
    """A BatchTopK meta-SAE on the SAE's decoder rows (Bussmann et al. 2024)."""

    name = "meta_sae"
    title = "Meta-SAE: latents as combinations of meta-latents"
    description = (
        "BatchTopK SAE trained on the decoder rows; each latent as a sparse "
        "combination of meta-latents (Bussmann et al. 2024)"
    )
    config_class = MetaSAEConfig
    needs = frozenset({"weights", "activations"})

    def __init__(self, config: MetaSAEConfig, context):
        super().__init__(config, context)
        # counted on the SAE's (activations') device, where the meta-SAE trains too
        self.firings = torch.zeros(
            int(context.sae.cfg.d_sae),
            dtype=torch.long,
            device=context.sae.W_dec.device,
        )
        self.n_tokens = 0

    def update(self, batch: ActivationBatch) -> None:
        """Count how often each base latent fires (to leave dead ones out)."""
        self.firings += (batch.feature_acts > 0).sum(0)
        self.n_tokens += batch.n

    def trained_latents(self) -> torch.Tensor | None:
        """Ids of the base latents to train on; None means all of them.

        With ``skip_dead`` and activations seen, latents that never fired are
        left out: their decoder rows were never trained and would make the
        meta-SAE spend capacity on noise.
        """
        if not self.config.skip_dead or self.n_tokens == 0:
            return None
        alive = torch.nonzero(self.firings > 0).squeeze(1).cpu()
        if alive.numel() == 0:
            raise ValueError(
                f"no latent fired on the run's {self.n_tokens} tokens, so there is "
                "nothing to decompose; check the SAE, or set meta_sae.skip_dead to "
                "False to decompose every decoder row"
            )
        return alive

    def firing_frequency(self) -> torch.Tensor | None:
        """Share of the run's tokens each base latent fired on (None: no tokens)."""
        if self.n_tokens == 0:
            return None
        return self.firings.double().cpu() / self.n_tokens

    def finish(self) -> AnalysisResult:
        """Train the meta-SAE, decompose the latents, plot and describe it."""
        context = self.context
        seed = self.config.seed if self.config.seed is not None else context.seed
        config = dataclasses.replace(self.config, seed=seed)
        latents = self.trained_latents()
        frequency = self.firing_frequency()
        meta_sae, log = fit_meta_sae(
            context.sae,
            config,
            release=context.release,
            sae_id=context.sae_id,
            latents=latents,
            firing_frequency=frequency,
        )
        result = decompose(context.sae, meta_sae, latents, firing_frequency=frequency)
        metrics = {
            **result.metrics,
            "dead_base_latents_left_out": result.metrics["d_sae"] - log.rows,
            "k": config.k,
            "training_steps": config.steps,
            "training_seconds": round(log.seconds, 2),
            "resampled_latents": log.resampled,
        }
        ids = result.base_latents["base_latent"].to_numpy()
        return AnalysisResult(
            metrics=metrics,
            tables={
                "base_latents": result.base_latents,
                "meta_latents": result.meta_latents,
                "memberships": result.memberships,
            },
            tensors={
                "training_mse": torch.tensor(log.losses),
                "base_latent_ids": torch.tensor(ids),
                "base_latent_firings": self.firings,
            },
            plots={
                "meta_sae": decomposition_plot(result),
                **({"fve_vs_null": null_plot(result)} if result.null else {}),
            },
            saes={"meta_sae": meta_sae},
            card=card_text(result, config, log, self.n_tokens),
        )


def decomposition_plot(result: MetaDecomposition) -> Figure:
    """Reconstruction cosine of the base latents; sizes of the meta-latents."""
    fig = Figure(figsize=(9, 3.5))
    left, right = fig.subplots(1, 2)
    cosine = result.base_latents["reconstruction_cosine"]
    left.hist(cosine, bins=40, range=(min(0.0, cosine.min()), 1.0), color="#3b6ea5")
    left.axvline(cosine.mean(), color="#c0504d", linestyle="--", label="mean")
    left.set_xlabel("cosine(decoder row, meta-SAE reconstruction)")
    left.set_ylabel("base latents")
    left.legend()
    sizes = result.meta_latents["n_members"].sort_values(ascending=False).to_numpy()
    alive = sizes[sizes > 0]
    right.plot(range(1, len(alive) + 1), alive, color="#3b6ea5", marker=".")
    right.set_yscale("log")
    right.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    right.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    right.yaxis.set_minor_formatter(NullFormatter())
    right.set_xlabel("meta-latent, largest first (dead ones left out)")
    right.set_ylabel("member base latents")
    metrics = result.metrics
    null = (
        f" (null {metrics['null_fve']:.1%})"
        if metrics.get("null_fve") is not None
        else ""
    )
    fig.suptitle(
        f"{metrics['fraction_variance_explained']:.1%} of variance explained{null}, "
        f"{metrics['mean_active_meta_latents']:.2f} meta-latents per latent, "
        f"{metrics['dead_meta_latents']} dead of {metrics['d_meta']}"
    )
    fig.tight_layout()
    return fig


def null_plot(result: MetaDecomposition) -> Figure:
    """The meta-SAE's FVE against the FVE of each null decoder's meta-SAE,
    with the margin it must clear to count as structure."""
    metrics, null = result.metrics, result.null
    fve = metrics["fraction_variance_explained"]
    fig = Figure(figsize=(6, 2.6))
    ax = fig.subplots()
    ax.axvspan(
        null.mean,
        null.mean + null.threshold(),
        color="#bbbbbb",
        alpha=0.5,
        label="null mean + threshold",
    )
    ax.plot(null.fves, [0] * len(null.fves), "o", color="#777777", label="null seeds")
    ax.axvline(fve, color="#c0504d", linewidth=2, label="this SAE's decoder")
    ax.set_yticks([])
    ax.set_xlabel("fraction of variance explained by the meta-SAE")
    verdict = "above" if metrics["distinguishable_from_null"] else "not above"
    ax.set_title(
        f"FVE {fve:.3f}, {verdict} the null ({null.mean:.3f} +/- {null.std:.3f}, "
        f"{len(null.fves)} random decoders)"
    )
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def card_text(
    result: MetaDecomposition, config: MetaSAEConfig, log: TrainingLog, n_tokens: int
) -> str:
    """The model-card section: what was trained, headline numbers, examples."""
    m = result.metrics
    left_out = m["d_sae"] - m["base_latents_used"]
    if left_out:
        scope = (
            f"the decoder rows of the {m['base_latents_used']} latents that fired on "
            f"the run's {n_tokens} tokens ({left_out} dead latents left out, "
            "their rows being untrained)"
        )
    else:
        scope = f"all {m['d_sae']} decoder rows"
    lines = [
        f"A BatchTopK meta-SAE with **{m['d_meta']} meta-latents** (k={config.k:g} "
        f"on average) was trained for {config.steps} steps ({log.seconds:.1f} s) on "
        f"{scope}, unit-normalised ({SAMPLING[config.sampling]}), so each latent "
        "is written as a sparse "
        "combination of meta-latents (Bussmann, Pearce, Leask, Bloom, Sharkey, "
        "Nanda 2024). The meta-SAE is saved in `meta_sae/meta_sae` as a SAE-Lens "
        "JumpReLU SAE whose threshold keeps k activations per latent on average.",
        "",
        f"- fraction of variance explained: **{m['fraction_variance_explained']:.3f}**",
        null_line(m),
        f"- mean reconstruction cosine: {m['mean_reconstruction_cosine']:.3f} "
        f"(median {m['median_reconstruction_cosine']:.3f})",
        f"- meta-latents per latent: {m['mean_active_meta_latents']:.2f}; latents "
        f"with none: {m['base_latents_without_meta_latent']}",
        f"- dead meta-latents: {m['dead_meta_latents']} of {m['d_meta']}",
        "",
        "Largest meta-latents and their strongest members:",
        "",
        "| meta-latent | members | top members (weight) | nearest base latents (cos) |",
        "|---|---|---|---|",
    ]
    largest = result.meta_latents.nlargest(LARGEST_SHOWN, "n_members")
    for _, row in largest.iterrows():
        shown = zip(
            row["members"][:MEMBERS_SHOWN],
            row["member_weights"][:MEMBERS_SHOWN],
            strict=True,
        )
        members = ", ".join(f"{b} ({w:.2f})" for b, w in shown)
        near = zip(
            row["nearest_base_latents"][:3],
            row["nearest_base_cosines"][:3],
            strict=True,
        )
        nearest = ", ".join(f"{b} ({c:.2f})" for b, c in near)
        lines.append(
            f"| {row['meta_latent']} | {row['n_members']} | {members} | {nearest} |"
        )
    lines += [
        "",
        "Tables: `base_latents` (each latent's meta-latents and weights, its "
        "firing frequency), `meta_latents` (each meta-latent's members, ranked, "
        "and its nearest base latents by decoder cosine), `memberships` "
        "(long form).",
    ]
    return "\n".join(lines)


def null_line(m: dict) -> str:
    """The card's line on the null baseline and whether the FVE beats it."""
    if "null_fve" not in m:
        return "- null baseline: not trained (meta_sae.null_seeds is 0)"
    verdict = (
        "above chance"
        if m["distinguishable_from_null"]
        else "**not distinguishable from chance**: the FVE says nothing about "
        "structure in this decoder"
    )
    return (
        f"- null FVE (the same trainer, d_meta, k, steps and sampling on "
        f"{m['null_seeds']} random unit-norm Gaussian decoders of the same shape): "
        f"{m['null_fve']:.3f} +/- {m['null_fve_std']:.3f}; FVE above null "
        f"**{m['fve_above_null']:+.3f}** (threshold {m['null_threshold']:.3f}): "
        f"{verdict}"
    )
