"""The ``llc`` analysis: the LLC of the SAE's own weights on its activations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from sae_lens_ext import Analysis, AnalysisResult

from .estimator import LLCResult, check_sampler_options
from .sae import SAE_LLC_DEFAULTS, estimate_sae_llc

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16}


@dataclass
class LLCConfig:
    """Settings of the ``llc`` analysis; their defaults are ``SAE_LLC_DEFAULTS``,
    shared with ``estimate_sae_llc``.  By default the step size is calibrated
    (``calibrate_llc``) before the estimate."""

    max_tokens: int = field(
        default=256, metadata={"help": "sae_in rows kept (first N tokens) as data"}
    )
    num_chains: int = field(
        default=SAE_LLC_DEFAULTS["num_chains"], metadata={"help": "SGLD chains"}
    )
    num_draws: int = field(
        default=SAE_LLC_DEFAULTS["num_draws"], metadata={"help": "draws per chain"}
    )
    num_burnin: int = field(
        default=SAE_LLC_DEFAULTS["num_burnin"],
        metadata={"help": "burn-in steps per chain"},
    )
    step_size: float | None = field(
        default=None,
        metadata={"help": "SGLD step size; default: calibrated (calibrate_llc)"},
    )
    calibrate: bool = field(
        default=True,
        metadata={"help": "calibrate the step size when step_size is not given"},
    )
    calibration_budget: int | None = field(
        default=None,
        metadata={"help": "chain-steps calibration may spend; default 8 rounds"},
    )
    nbeta: float | None = field(
        default=SAE_LLC_DEFAULTS["nbeta"],
        metadata={"help": "inverse temperature n*beta; default m/log m"},
    )
    localization: float = field(
        default=SAE_LLC_DEFAULTS["localization"],
        metadata={"help": "strength gamma of the pull towards w*"},
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
        if self.calibration_budget is not None and self.calibration_budget < 1:
            raise ValueError(
                f"calibration_budget must be at least 1, got {self.calibration_budget}"
            )
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
        options = {}
        if config.step_size is not None:
            options["step_size"] = config.step_size
        result = estimate_sae_llc(
            self.context.sae,
            activations,
            sparsity_coefficient=config.sparsity_coefficient,
            calibrate=config.calibrate,
            calibration_budget=config.calibration_budget,
            num_chains=config.num_chains,
            num_draws=config.num_draws,
            num_burnin=config.num_burnin,
            nbeta=config.nbeta,
            localization=config.localization,
            batch_size=config.batch_size,
            seed=self.context.seed,
            autocast_dtype=AUTOCAST_DTYPES[config.autocast],
            **options,
        )
        tables = {"trace": result.trace, "chains": result.per_chain_table()}
        plots = {"trace": result.trace_plot()}
        if result.calibration is not None:
            tables["calibration"] = result.calibration.table
            plots["calibration"] = result.calibration.plot()
        return AnalysisResult(
            metrics={
                **result.summary(),
                "calibrated": bool(
                    result.calibration is not None
                    and result.calibration.recommended is not None
                ),
            },
            tables=tables,
            plots=plots,
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
        f"{calibration_text(result)}\n\n"
        "The localising pull keeps the chains in a small ball around w*, so the "
        "number is comparable between SAEs estimated with the same nbeta and "
        "localization, not an absolute measure (see docs/llc.md).\n\n"
        f"{verdict}\n\n![LLC trace](llc/trace.png)"
    )


def calibration_text(result: LLCResult) -> str:
    """How the step size was chosen, for the card."""
    calibration = result.calibration
    if calibration is None:
        return "The step size was set, not calibrated."
    steps = ", ".join(f"{s:g}" for s in sorted(set(calibration.table["step_size"])))
    done = (
        f"`calibrate_llc` tried step sizes {steps} "
        f"({calibration.spent:,} chain-steps; table `llc/calibration.parquet`, "
        "plot `llc/calibration.png`)"
    )
    if calibration.recommended is None:
        return (
            f"{done} and recommended none, so the default step size was used: "
            f"{calibration.reason}"
        )
    return f"{done} and recommended {calibration.reason}."
