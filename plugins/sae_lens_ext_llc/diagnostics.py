"""Checks on an LLC estimate, each with the reason it fails and the fix.

Severity ``error``: the number should not be used (divergence, a negative
estimate, an estimate above the d/2 bound, w* a saddle).  ``warning``: usable
with care (chains disagree, burn-in too short, traces still trending, a step
size the MALA check rejects, estimate indistinguishable from zero, w* not a
critical point).  ``info``: context (localisation dominates, negative
curvature the localising pull holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .convergence import (
    effective_sample_size,
    geweke_z,
    is_stationary,
    settling_step,
    split_rhat,
)
from .curvature import CurvatureReport

RHAT_LIMIT = 1.1
GEWEKE_LIMIT = 3.0
EXPLOSION_FACTOR = 10.0
DRIFT_TOLERANCE = 0.1  # a trend over the draws of more than 10% of the level
MIN_ACCEPTANCE = 0.9  # devinterp's guidance for the MALA acceptance of SGLD steps
CURVATURE_TOLERANCE = 1e-4  # |lowest| / |highest| eigenvalue below this: zero
BATCH_NOISE_SDS = 5.0  # minibatch loss dips allowed below L(w*), in SDs


@dataclass
class Finding:
    """One failed check: a short code, its severity and an explanation."""

    code: str
    severity: str
    message: str


@dataclass
class LLCDiagnostics:
    """Numbers behind the checks, and the findings of the checks that failed.

    ``r_hat``: split-R-hat of the per-draw LLC across chains.  ``ess``:
    effective sample size of all draws.  ``geweke_z``: early vs late draw
    means in standard errors.  ``settling_step``: step (burn-in included) at
    which the chain-averaged trace reaches its late level.
    ``chains_below_init``: chains whose mean sampled loss is below L(w*).
    ``lowest_chain_loss``: the lowest of the chains' mean losses.
    ``diverged_chains``: chains whose loss became non-finite or exploded
    (excluded from the estimate).  ``init_grad_norm``: |grad L(w*)| on the
    full data.  ``gradient_bias_bound``: nbeta^2 |grad L(w*)|^2 / gamma, the
    most the gradient at w* can pull the estimate down.
    ``localization_share``: mean squared distance from w* over d / gamma, the
    spread the localising prior alone allows (near 1: the prior, not the
    loss, confines the chains).  ``loss_drift`` / ``distance_drift``: the
    fitted trend of the chain-averaged loss rise (nbeta (L - L(w*))) and
    distance over the draws, relative to their level; ``stationary``: both
    traces stopped trending (:func:`.convergence.is_stationary`).
    ``acceptance``: mean MALA acceptance probability of the SGLD steps over
    the draws (None when not tracked).  ``loss_gap``: L(w*) minus the lowest
    loss any healthy chain reached (positive: the chains found lower loss
    than w*).  ``curvature``: the Lanczos report of the Hessian at w* (None
    when not computed).
    """

    r_hat: float
    ess: float
    geweke_z: float
    settling_step: int
    chains_below_init: int
    lowest_chain_loss: float
    diverged_chains: list[int]
    init_grad_norm: float
    gradient_bias_bound: float | None
    localization_share: float | None
    loss_drift: float = float("nan")
    distance_drift: float = float("nan")
    stationary: bool = False
    acceptance: float | None = None
    loss_gap: float = float("nan")
    curvature: CurvatureReport | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check raised an error or a warning."""
        return not any(f.severity in ("error", "warning") for f in self.findings)

    @property
    def flags(self) -> list[str]:
        """Codes of the failed checks."""
        return [f.code for f in self.findings]

    def has(self, code: str) -> bool:
        """Whether the check ``code`` failed."""
        return code in self.flags

    def messages(self) -> list[str]:
        """Human-readable findings, most severe first."""
        order = {"error": 0, "warning": 1, "info": 2}
        ranked = sorted(self.findings, key=lambda f: order[f.severity])
        return [f"[{f.severity}] {f.code}: {f.message}" for f in ranked]


@dataclass
class ChainEvidence:
    """What ``diagnose`` reads: traces and the settings that made them.

    ``llc_trace`` is nbeta * (loss - L(w*)) for every step ``[C, T]`` (burn-in
    included, NaN after divergence); ``loss_trace`` the raw losses;
    ``distance_trace`` |w - w*|.
    """

    llc_trace: np.ndarray
    loss_trace: np.ndarray
    distance_trace: np.ndarray
    num_burnin: int
    init_loss: float
    init_grad_norm: float
    n_params: int
    nbeta: float
    step_size: float
    localization: float
    acceptance_trace: np.ndarray | None = None
    batch_loss_sd: float = 0.0
    curvature: CurvatureReport | None = None
    min_acceptance: float = MIN_ACCEPTANCE


def exploded_chains(evidence: ChainEvidence) -> list[int]:
    """Chains whose loss went non-finite or rose more than tenfold.

    "Tenfold" is measured against the larger of |L(w*)| and (d/2)/nbeta, the
    biggest loss rise any chain at equilibrium can show (the LLC is at most
    d/2).
    """
    scale = max(abs(evidence.init_loss), 0.5 * evidence.n_params / evidence.nbeta)
    limit = evidence.init_loss + EXPLOSION_FACTOR * scale
    bad = []
    for chain, losses in enumerate(evidence.loss_trace):
        if not np.isfinite(losses).all() or np.nanmax(losses) > limit:
            bad.append(chain)
    return bad


def diagnose(
    evidence: ChainEvidence, llc: float, llc_se: float, healthy: list[int]
) -> LLCDiagnostics:
    """Run every check on the chains and the estimate built from ``healthy`` ones."""
    draws = evidence.llc_trace[healthy, evidence.num_burnin :]
    losses = evidence.loss_trace[healthy, evidence.num_burnin :]
    chain_losses = losses.mean(axis=1) if len(healthy) else np.array([np.nan])
    gamma, nbeta = evidence.localization, evidence.nbeta
    bound = nbeta**2 * evidence.init_grad_norm**2 / gamma if gamma > 0 else None
    share = None
    if gamma > 0 and len(healthy):
        spread = np.nanmean(
            evidence.distance_trace[healthy, evidence.num_burnin :] ** 2
        )
        share = float(spread / (evidence.n_params / gamma))
    diagnostics = LLCDiagnostics(
        r_hat=split_rhat(draws) if len(healthy) > 1 else float("nan"),
        ess=effective_sample_size(draws) if len(healthy) else 0.0,
        geweke_z=geweke_z(draws) if len(healthy) else float("nan"),
        settling_step=settling_step(np.nanmean(evidence.llc_trace[healthy], axis=0))
        if len(healthy)
        else 0,
        chains_below_init=int((chain_losses < evidence.init_loss).sum()),
        lowest_chain_loss=float(np.min(chain_losses)),
        diverged_chains=[
            c for c in range(evidence.llc_trace.shape[0]) if c not in healthy
        ],
        init_grad_norm=evidence.init_grad_norm,
        gradient_bias_bound=bound,
        localization_share=share,
        curvature=evidence.curvature,
    )
    if len(healthy):
        distances = evidence.distance_trace[healthy, evidence.num_burnin :]
        loss_still, diagnostics.loss_drift = is_stationary(draws, DRIFT_TOLERANCE)
        distance_still, diagnostics.distance_drift = is_stationary(
            distances, DRIFT_TOLERANCE
        )
        diagnostics.stationary = loss_still and distance_still
        after_start = evidence.loss_trace[healthy, 1:]
        if after_start.size:
            diagnostics.loss_gap = float(evidence.init_loss - np.nanmin(after_start))
        if evidence.acceptance_trace is not None:
            accepted = evidence.acceptance_trace[healthy, evidence.num_burnin :]
            diagnostics.acceptance = float(np.nanmean(accepted))
    diagnostics.findings = findings(evidence, diagnostics, llc, llc_se, len(healthy))
    return diagnostics


def findings(
    evidence: ChainEvidence,
    diag: LLCDiagnostics,
    llc: float,
    llc_se: float,
    n_healthy: int,
) -> list[Finding]:
    """The failed checks, each explained."""
    found: list[Finding] = []
    n_chains = evidence.llc_trace.shape[0]
    eps, gamma, nbeta = evidence.step_size, evidence.localization, evidence.nbeta
    half_d = evidence.n_params / 2
    if diag.diverged_chains:
        severity = "error" if n_healthy == 0 else "warning"
        found.append(
            Finding(
                "diverged",
                severity,
                f"{len(diag.diverged_chains)} of {n_chains} chains diverged (loss "
                "became NaN/inf or rose more than tenfold): the step size "
                f"{eps:g} is too large for this loss, or localization {gamma:g} too "
                "weak to hold the chains. Lower step_size (or raise localization); "
                "the estimate uses only the other chains.",
            )
        )
    if n_healthy == 0:
        return found
    below = (
        f"{diag.chains_below_init} of {n_healthy} chains average a loss below "
        f"L(w*) = {evidence.init_loss:.6g} (lowest chain mean "
        f"{diag.lowest_chain_loss:.6g})"
    )
    if llc < 0:
        found.append(
            Finding(
                "negative",
                "error",
                f"the LLC estimate {llc:.4g} is negative: {below}. The sampler "
                "found lower loss near w*, so w* is not a local minimum (a saddle, "
                "or training has not converged). Optimise the weights further "
                f"before estimating, or raise localization (now {gamma:g}) to keep "
                "the chains closer to w*.",
            )
        )
    elif llc < 2 * llc_se:
        found.append(
            Finding(
                "near_zero",
                "warning",
                f"the LLC estimate {llc:.4g} ± {llc_se:.2g} cannot be told apart "
                f"from zero; {below}. Either the loss barely rises around w* at "
                f"nbeta {nbeta:.4g}, or w* is not a local minimum (optimise first, "
                "or raise localization). More chains or draws shrink the error.",
            )
        )
    if llc - 2 * llc_se > half_d:
        found.append(
            Finding(
                "exceeds_bound",
                "error",
                f"the LLC estimate {llc:.4g} ± {llc_se:.2g} exceeds d/2 = {half_d:g}, "
                "the largest "
                f"value possible for {evidence.n_params} parameters: the step size "
                f"{eps:g} is too large (the discretised chains overshoot) or the "
                "chains are drifting away. Lower step_size.",
            )
        )
    if np.isfinite(diag.r_hat) and diag.r_hat > RHAT_LIMIT:
        found.append(
            Finding(
                "not_converged",
                "warning",
                f"the chains disagree (split R-hat {diag.r_hat:.3f} > {RHAT_LIMIT}): "
                "they have not mixed. Run more draws or a longer burn-in, or lower "
                "the step size if traces are still drifting.",
            )
        )
    if np.isfinite(diag.geweke_z) and abs(diag.geweke_z) > GEWEKE_LIMIT:
        found.append(
            Finding(
                "burn_in",
                "warning",
                f"the draws still drift at the start (Geweke z = {diag.geweke_z:.1f}: "
                "the first 10% of draws differ from the last half): the burn-in of "
                f"{evidence.num_burnin} steps is too short. The chain-averaged trace "
                f"settles around step {diag.settling_step}; set num_burnin to at "
                "least that.",
            )
        )
    if diag.gradient_bias_bound is not None and diag.gradient_bias_bound > 0.1 * max(
        abs(llc), llc_se
    ):
        found.append(
            Finding(
                "not_critical",
                "warning",
                f"w* is not a critical point: |grad L(w*)| = {diag.init_grad_norm:.3g}, "
                f"which can pull the estimate down by up to "
                f"{diag.gradient_bias_bound:.3g} (nbeta^2 |grad|^2 / localization). "
                "Train the weights to convergence first, or raise localization.",
            )
        )
    if not diag.stationary:
        found.append(
            Finding(
                "not_stationary",
                "warning",
                f"the traces still trend through the draws (loss rise drifts "
                f"{diag.loss_drift:.0%} of its level, distance "
                f"{diag.distance_drift:.0%}): the chains have not reached their "
                f"stationary distribution in {evidence.num_burnin} burn-in steps, "
                "so the estimate depends on the run length. Run longer chains "
                "(num_burnin and num_draws), or a larger step size if the MALA "
                "acceptance allows it; calibrate_llc does this by itself.",
            )
        )
    if diag.acceptance is not None and diag.acceptance < evidence.min_acceptance:
        found.append(
            Finding(
                "low_acceptance",
                "warning",
                f"the MALA acceptance rate of the SGLD steps is "
                f"{diag.acceptance:.2f} (< {evidence.min_acceptance}): at step size "
                f"{eps:g} the discretised chain samples a distorted posterior, "
                "which biases the estimate. Lower step_size (and run more steps).",
            )
        )
    found.extend(saddle_findings(evidence, diag, llc))
    if diag.localization_share is not None and diag.localization_share > 0.5:
        found.append(
            Finding(
                "localization_dominates",
                "info",
                f"the chains spread {diag.localization_share:.0%} as far from w* as "
                f"the localising prior alone allows (d/localization): at nbeta "
                f"{nbeta:.4g} the loss pins down few directions, so the estimate "
                "depends on localization. Compare a few localization values "
                "(calibrate_llc) before trusting it.",
            )
        )
    return found


def saddle_findings(
    evidence: ChainEvidence, diag: LLCDiagnostics, llc: float
) -> list[Finding]:
    """``saddle`` (error) when w* is not a local minimum, with the cause and fix;
    ``negative_curvature`` (info) when the localising pull holds a direction
    the loss curves down in.

    The evidence: a Hessian eigenvalue at w* below zero by more than
    ``CURVATURE_TOLERANCE`` of the largest one, strong enough that
    nbeta * eigenvalue + localization < 0 (the localised posterior is then
    not confined by its quadratic part along that direction); or chains that
    reached a loss below L(w*) by more than rounding and, with minibatches,
    ``BATCH_NOISE_SDS`` standard deviations of the minibatch loss.
    """
    nbeta, gamma = evidence.nbeta, evidence.localization
    report = diag.curvature
    negative = report is not None and report.lowest < -CURVATURE_TOLERANCE * max(
        abs(report.highest), 1e-12
    )
    unconfined = negative and nbeta * report.lowest + gamma < 0
    allowance = 1e-6 * abs(evidence.init_loss) + BATCH_NOISE_SDS * (
        evidence.batch_loss_sd
    )
    descended = np.isfinite(diag.loss_gap) and diag.loss_gap > allowance
    if not (unconfined or descended):
        if negative:
            return [
                Finding(
                    "negative_curvature",
                    "info",
                    f"the Hessian at w* has a negative eigenvalue "
                    f"{report.lowest:.3g} (largest {report.highest:.3g}; "
                    f"direction: {report.direction_text()}), but the localising "
                    f"pull {gamma:g} outweighs nbeta x it "
                    f"({nbeta * report.lowest:.3g}) and no chain went below "
                    "L(w*): w* is a saddle or an unconverged point whose "
                    "estimate depends on localization.",
                )
            ]
        return []
    causes = []
    if negative:
        causes.append(
            f"the lowest Hessian eigenvalue at w* is {report.lowest:.3g} "
            f"(largest {report.highest:.3g}; Lanczos over "
            f"{report.dimension:,} of {report.n_params:,} weights), its "
            f"direction dominated by {report.direction_text()}"
        )
    if descended:
        causes.append(
            f"the chains' running minimum loss went {diag.loss_gap:.3g} below "
            f"L(w*) = {evidence.init_loss:.6g} (nbeta x that = "
            f"{nbeta * diag.loss_gap:.3g})"
        )
    what = "a saddle" if negative else "not a local minimum (a saddle, or unconverged)"
    return [
        Finding(
            "saddle",
            "error",
            f"w* is {what}: {'; '.join(causes)}. The chains can descend from w*, "
            f"so the estimate {llc:.4g} mixes that descent with the local geometry "
            "(it can stay positive). Continue training from w* (a small step along "
            "that direction escapes a saddle), then estimate at the new minimum; "
            "raising localization only hides the descent.",
        )
    ]
