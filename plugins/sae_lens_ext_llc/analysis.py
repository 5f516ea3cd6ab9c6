"""The ``llc`` analysis: the LLC of the SAE's own weights on its activations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from sae_lens_ext import Analysis, AnalysisResult, require_reconstruction

from .estimator import LLCResult, check_sampler_options
from .sae import estimate_sae_llc

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16}


@dataclass
class LLCConfig:
    """Sampler settings of the ``llc`` analysis (small by default: ~5 s on the demo SAE)."""

    max_tokens: int = field(
        default=256, metadata={"help": "sae_in rows kept (first N tokens) as data"}
    )
    num_chains: int = field(default=4, metadata={"help": "SGLD chains"})
    num_draws: int = field(default=200, metadata={"help": "draws per chain"})
    num_burnin: int = field(default=50, metadata={"help": "burn-in steps per chain"})
    step_size: float = field(default=3e-4, metadata={"help": "SGLD step size epsilon"})
    nbeta: float | None = field(
        default=None, metadata={"help": "inverse temperature n*beta; default m/log m"}
    )
    localization: float = field(
        default=1000.0, metadata={"help": "strength gamma of the pull towards w*"}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "minibatch rows per step; default all"}
    )
    sparsity_coefficient: float = field(
        default=0.0, metadata={"help": "add this times the L1 term to the loss"}
    )
    autocast: Literal["none", "bf16"] = field(
        default="none", metadata={"help": "bf16 autocast for the passes (fast path)"}
    )

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        check_sampler_options(
            self.num_chains,
            self.num_draws,
            self.num_burnin,
            self.step_size,
            self.nbeta,
            self.localization,
        )


class LLCAnalysis(Analysis):
    """Local learning coefficient of the SAE's weights (Lau et al. 2023)."""

    name = "llc"
    title = "LLC: local learning coefficient"
    description = "LLC of the SAE's weights on its activations, batched SGLD"
    config_class = LLCConfig
    needs = frozenset({"activations"})
    headline_metrics = ("llc",)

    def __init__(self, config: LLCConfig, context):
        super().__init__(config, context)
        require_reconstruction(context.sae, "llc")
        self.rows: list[torch.Tensor] = []
        self.n_kept = 0

    def update(self, batch) -> None:
        """Keep this batch's sae_in rows until ``max_tokens`` are held."""
        room = self.config.max_tokens - self.n_kept
        if room > 0:
            kept = batch.sae_in[:room].detach().float().cpu().clone()
            self.rows.append(kept)
            self.n_kept += len(kept)

    def finish(self) -> AnalysisResult:
        """Sample the SAE's weights and report the estimate and diagnostics."""
        if not self.rows:
            raise ValueError(
                "the llc analysis received no activations; run with n_tokens > 0"
            )
        activations = torch.cat(self.rows)
        config = self.config
        result = estimate_sae_llc(
            self.context.sae,
            activations,
            sparsity_coefficient=config.sparsity_coefficient,
            num_chains=config.num_chains,
            num_draws=config.num_draws,
            num_burnin=config.num_burnin,
            step_size=config.step_size,
            nbeta=config.nbeta,
            localization=config.localization,
            batch_size=config.batch_size,
            seed=self.context.seed,
            autocast_dtype=AUTOCAST_DTYPES[config.autocast],
        )
        return AnalysisResult(
            metrics=result.summary(),
            tables={"trace": result.trace, "chains": result.per_chain_table()},
            plots={"trace": result.trace_plot()},
            card=card_text(result),
        )


def card_text(result: LLCResult) -> str:
    """The model-card section: estimate, settings, verdict and caveats."""
    s = result.settings
    diag = result.diagnostics
    notes = "\n".join(f"- {m}" for m in diag.messages())
    if diag.ok:
        verdict = "No check raised an error or a warning." + (
            f" Notes:\n\n{notes}" if notes else ""
        )
    else:
        verdict = f"Diagnostics raised concerns:\n\n{notes}"
    return (
        f"Local learning coefficient of the SAE's {result.n_params:,} weights: "
        f"**{result.llc:.4g} ± {result.llc_se:.2g}** (standard error over "
        f"{s['num_chains']} chains; d/2 = {result.n_params / 2:,.0f}), split R-hat "
        f"{diag.r_hat:.3f}. Loss: normalised reconstruction MSE on the first "
        f"{s['n_samples']} tokens of the run, L(w*) = {result.init_loss:.4g}. "
        f"Localised SGLD (Lau et al. 2023): {s['num_chains']} chains x "
        f"({s['num_burnin']} burn-in + {s['num_draws']} draws), step size "
        f"{s['step_size']:g}, n*beta {s['nbeta']:.4g}, localization "
        f"{s['localization']:g}, autocast {s['autocast']}; "
        f"{result.seconds:.1f} s.\n\n"
        "These are deliberately small default settings so the analysis fits in a "
        "default run: the number is comparable between SAEs estimated with the "
        "same settings, not an absolute measure. For a careful estimate run "
        "`calibrate_llc` and raise the draws (see docs/llc.md).\n\n"
        f"{verdict}\n\n![LLC trace](llc/trace.png)"
    )
