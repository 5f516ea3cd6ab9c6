"""The ``meta_sae`` analysis: train a meta-SAE on the run's SAE and decompose it."""

from __future__ import annotations

import dataclasses

import torch
from matplotlib.figure import Figure

from sae_lens_ext import Analysis, AnalysisResult

from .config import MetaSAEConfig
from .decompose import MetaDecomposition, decompose
from .meta_sae import fit_meta_sae
from .trainer import TrainingLog

LARGEST_SHOWN = 5
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
    needs = frozenset({"weights"})

    def finish(self) -> AnalysisResult:
        """Train the meta-SAE, decompose every latent, plot and describe it."""
        context = self.context
        seed = self.config.seed if self.config.seed is not None else context.seed
        config = dataclasses.replace(self.config, seed=seed)
        meta_sae, log = fit_meta_sae(
            context.sae, config, release=context.release, sae_id=context.sae_id
        )
        result = decompose(context.sae, meta_sae)
        metrics = {
            **result.metrics,
            "k": config.k,
            "training_steps": config.steps,
            "training_seconds": round(log.seconds, 2),
            "resampled_latents": log.resampled,
        }
        return AnalysisResult(
            metrics=metrics,
            tables={
                "base_latents": result.base_latents,
                "meta_latents": result.meta_latents,
                "memberships": result.memberships,
            },
            tensors={"training_mse": torch.tensor(log.losses)},
            plots={"meta_sae": decomposition_plot(result)},
            saes={"meta_sae": meta_sae},
            card=card_text(result, config, log),
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
    right.plot(range(1, len(sizes) + 1), sizes, color="#3b6ea5")
    right.set_yscale("symlog")
    right.set_xlabel("meta-latent (by size)")
    right.set_ylabel("member base latents")
    metrics = result.metrics
    fig.suptitle(
        f"{metrics['fraction_variance_explained']:.1%} of variance explained, "
        f"{metrics['mean_active_meta_latents']:.2f} meta-latents per latent, "
        f"{metrics['dead_meta_latents']} dead of {metrics['d_meta']}"
    )
    fig.tight_layout()
    return fig


def card_text(
    result: MetaDecomposition, config: MetaSAEConfig, log: TrainingLog
) -> str:
    """The model-card section: what was trained, headline numbers, examples."""
    m = result.metrics
    lines = [
        f"A BatchTopK meta-SAE with **{m['d_meta']} meta-latents** (k={config.k:g} "
        f"on average) was trained for {config.steps} steps ({log.seconds:.1f} s) on "
        f"the {m['d_sae']} unit-normalised decoder rows of this SAE, so each latent "
        "is written as a sparse combination of meta-latents (Bussmann, Pearce, "
        "Leask, Bloom, Sharkey, Nanda 2024). The meta-SAE is saved in "
        "`meta_sae/meta_sae` as a SAE-Lens JumpReLU SAE whose threshold keeps "
        "k activations per latent on average.",
        "",
        f"- fraction of variance explained: **{m['fraction_variance_explained']:.3f}**",
        f"- mean reconstruction cosine: {m['mean_reconstruction_cosine']:.3f} "
        f"(median {m['median_reconstruction_cosine']:.3f})",
        f"- meta-latents per latent: {m['mean_active_meta_latents']:.2f}; latents "
        f"with none: {m['base_latents_without_meta_latent']}",
        f"- dead meta-latents: {m['dead_meta_latents']} of {m['d_meta']}",
        "",
        "Largest meta-latents and their strongest members:",
        "",
        "| meta-latent | members | top members (weight) |",
        "|---|---|---|",
    ]
    largest = result.meta_latents.nlargest(LARGEST_SHOWN, "n_members")
    for _, row in largest.iterrows():
        shown = zip(
            row["members"][:MEMBERS_SHOWN],
            row["member_weights"][:MEMBERS_SHOWN],
            strict=True,
        )
        members = ", ".join(f"{b} ({w:.2f})" for b, w in shown)
        lines.append(f"| {row['meta_latent']} | {row['n_members']} | {members} |")
    lines += [
        "",
        "Tables: `base_latents` (each latent's meta-latents and weights), "
        "`meta_latents` (each meta-latent's members, ranked), `memberships` "
        "(long form).",
    ]
    return "\n".join(lines)
