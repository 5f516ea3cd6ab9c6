"""The host's own analysis: sparsity, reconstruction and CE loss of an SAE.

It runs in every ``sae-lens-ext run`` (disable with ``-p no:base``), so a run
is useful before any plugin is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from .analysis import ActivationBatch, Analysis, AnalysisResult
from .core_statistics import CoreStatistics
from .downstream import downstream_metrics
from .reconstruction import position_mask, require_reconstruction


@dataclass
class BaseConfig:
    """Options of the base analysis."""

    dense_threshold: float = field(
        default=0.1, metadata={"help": "firing frequency above which a latent is dense"}
    )
    ce_batches: int = field(
        default=2,
        metadata={"help": "batches spliced with the SAE to measure CE loss (0: skip)"},
    )


class BaseAnalysis(Analysis):
    """L0, explained variance, MSE, dead/dense latents, shrinkage, spliced CE and KL."""

    name = "base"
    title = "Base metrics"
    description = (
        "L0, variance explained, MSE, dead/dense latents, shrinkage, "
        "CE loss recovered, KL divergence"
    )
    config_class = BaseConfig
    needs = frozenset({"activations", "model"})
    headline_metrics = ("l0", "mse", "explained_variance")

    def __init__(self, config: BaseConfig, context):
        super().__init__(config, context)
        require_reconstruction(context.sae, "base")
        d_sae = context.sae.cfg.d_sae
        # per-latent sums stay on the SAE's device (that of the activations)
        device = context.sae.W_dec.device
        self.fire_count = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.act_max = torch.zeros(d_sae, device=device)
        self.n = 0
        self.l0_sum = 0.0
        self.sq_err = 0.0
        self.x_sum: torch.Tensor | None = None
        self.x_sq = 0.0
        self.contexts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.downstream: dict | None = None
        self.core = CoreStatistics(d_sae, device)

    def update(self, batch: ActivationBatch) -> None:
        """Accumulate firing counts, errors and the first batches' contexts."""
        acts = batch.feature_acts.float()
        active = acts != 0
        self.fire_count += active.sum(0, dtype=torch.float64)
        self.act_sum += acts.sum(0, dtype=torch.float64)
        self.act_max = torch.maximum(self.act_max, acts.max(0).values)
        self.l0_sum += active.sum().item()
        x = batch.sae_in.double()
        self.sq_err += (x - batch.sae_out.double()).pow(2).sum().item()
        self.x_sum = x.sum(0) if self.x_sum is None else self.x_sum + x.sum(0)
        self.x_sq += x.pow(2).sum().item()
        self.n += batch.n
        if len(self.contexts) < self.config.ce_batches:
            self.contexts.append((batch.token_context, batch.positions))
        self.core.update(batch)

    def ce_inputs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The token ids and position mask of the spliced CE passes (None: no CE)."""
        if not self.contexts or self.context.model is None:
            return None
        return splice_inputs(self.contexts)

    def use_downstream(self, metrics: dict) -> None:
        """Take the CE and KL metrics computed elsewhere on :meth:`ce_inputs`.

        A sweep computes them for all its SAEs at a hook at once
        (:func:`sae_lens_ext.downstream.downstream_metrics_many`).
        """
        self.downstream = metrics

    def finish(self) -> AnalysisResult:
        """Summarise the pass into metrics, a per-latent table and a plot."""
        sae = self.context.sae
        n, d_in = self.n, sae.cfg.d_in
        total_var = self.x_sq - (self.x_sum.pow(2).sum().item() / n)
        freq = (self.fire_count / n).float().cpu()
        metrics = {
            "n_tokens": n,
            "d_in": d_in,
            "d_sae": sae.cfg.d_sae,
            "l0": self.l0_sum / n,
            "mse": self.sq_err / (n * d_in),
            "explained_variance": 1.0 - self.sq_err / total_var,
            "dead_fraction": (freq == 0).float().mean().item(),
            "dense_fraction": (freq > self.config.dense_threshold)
            .float()
            .mean()
            .item(),
            **self.core.metrics(),
        }
        inputs = self.ce_inputs()
        if inputs is not None:
            metrics.update(ce_metrics(self.context, *inputs, self.downstream))
        log_freq = torch.log10(freq.clamp_min(1e-10))
        table = pd.DataFrame(
            {
                "latent": range(sae.cfg.d_sae),
                "firing_frequency": freq.numpy(),
                "mean_activation": (self.act_sum / self.fire_count.clamp_min(1))
                .cpu()
                .numpy(),
                "max_activation": self.act_max.cpu().numpy(),
            }
        )
        return AnalysisResult(
            metrics=metrics,
            tables={"latents": table},
            tensors={"log_feature_density": log_freq},
            plots={"feature_density": density_plot(log_freq, metrics)},
            card=card_text(metrics),
            saebench=self.core.saebench_terms(),
        )


def splice_inputs(contexts) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and the mask of the positions the shared pass used in them."""
    tokens = [token_context for token_context, _ in contexts]
    masks = [position_mask(token_context, kept) for token_context, kept in contexts]
    return torch.cat(tokens), torch.cat(masks)


def ce_metrics(
    context,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
    downstream: dict | None = None,
) -> dict[str, float]:
    """Clean, SAE-spliced and zero-ablated CE loss and KL divergence on ``tokens``.

    The SAE's reconstruction (or zero) replaces the hook activations only at
    the positions in ``mask`` ``[n_seq, context]`` (all when None), the same
    positions the shared pass used; the loss is the mean over every
    next-token prediction (see :func:`.downstream.downstream_metrics`).
    ``ce_warning`` is set when the SAE lowers the loss.  ``downstream``:
    those metrics already computed (by a sweep), else computed here.
    """
    metrics = dict(
        downstream
        if downstream is not None
        else downstream_metrics(
            context.model, context.sae, context.hook_name, tokens, mask
        )
    )
    warning = ce_warning(
        metrics["ce_loss_clean"],
        metrics["ce_loss_spliced"],
        metrics["ce_loss_zero_ablated"],
        metrics["ce_loss_recovered"],
    )
    if warning:
        metrics["ce_warning"] = warning
    return metrics


CE_MARGIN = 0.01


def ce_warning(
    clean: float, spliced: float, zeroed: float, recovered: float
) -> str | None:
    """A warning when splicing the SAE lowers the loss, else None.

    Noise below ``CE_MARGIN`` (1%) of the zero-ablation gap is not flagged: a
    near-perfect SAE can read a hair under the clean loss.
    """
    margin = CE_MARGIN * max(abs(zeroed - clean), 1e-6 * max(1.0, abs(clean)))
    found = []
    if spliced < clean - margin:
        found.append(f"spliced CE {spliced:.4g} is below clean CE {clean:.4g}")
    if recovered > 1 + CE_MARGIN:
        found.append(f"CE recovered is {recovered:.4g} > 1")
    if not found:
        return None
    return "; ".join(found) + ": the SAE lowers the loss: check the hook and positions"


def density_plot(log_freq: torch.Tensor, metrics: dict):
    """Histogram of log10 firing frequency, the SAE researcher's first look."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(log_freq.numpy(), bins=60, color="#3b6ea5")
    ax.set_xlabel("log10 firing frequency (dead latents at -10)")
    ax.set_ylabel("latents")
    ax.set_title(
        f"L0 {metrics['l0']:.1f}, variance explained {metrics['explained_variance']:.3f}"
    )
    fig.tight_layout()
    return fig


CE_NOTE = (
    "Sparsity and reconstruction are measured at the run's positions (named at "
    "the top of this card). For the CE loss the SAE's reconstruction (or zero, "
    "for the ablation) replaces the hook activations at those same positions "
    "only, and the loss is averaged over every next-token prediction. CE needs "
    "a language model: for other models turn it off with `--base.ce_batches 0` "
    '(`config={"base": {"ce_batches": 0}}`).'
)


def card_text(metrics: dict) -> str:
    """The base analysis's model-card section."""
    rows = "\n".join(
        f"| {key} | {value:.4g} |"
        if isinstance(value, float)
        else f"| {key} | {value} |"
        for key, value in metrics.items()
        if key != "ce_warning"
    )
    warning = metrics.get("ce_warning")
    flagged = f"**Warning: {warning}.**\n\n" if warning else ""
    return f"{flagged}{CE_NOTE}\n\n| metric | value |\n|---|---|\n{rows}\n"
