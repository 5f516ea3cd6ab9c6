"""LLC diagnostics on synthetic chain traces whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
from sae_lens_ext_llc.curvature import CurvatureReport
from sae_lens_ext_llc.diagnostics import (
    ChainEvidence,
    LLCDiagnostics,
    diagnose,
    exploded_chains,
    findings,
    saddle_findings,
)


def evidence_with_llc(level: float, n_params: int) -> ChainEvidence:
    """Four steady chains whose per-step LLC is ``level`` plus small noise."""
    rng = np.random.default_rng(0)
    nbeta, init_loss = 50.0, 1.0
    llc = level + 0.01 * rng.standard_normal((4, 300))
    return ChainEvidence(
        llc_trace=llc,
        loss_trace=init_loss + llc / nbeta,
        distance_trace=0.1 + 0.001 * rng.standard_normal((4, 300)),
        num_burnin=50,
        init_loss=init_loss,
        init_grad_norm=0.0,
        n_params=n_params,
        nbeta=nbeta,
        step_size=1e-4,
        localization=1.0,
    )


@pytest.mark.parametrize(
    ("level", "flagged"),
    # d = 10: d/2 = 5.  (A wrong bound, e.g. 10 XOR 2 = 8 or 10 - 2, misjudges 6.)
    [(4.0, False), (6.0, True), (9.0, True)],
)
def test_an_estimate_above_d_over_2_is_an_error(level, flagged):
    evidence = evidence_with_llc(level, n_params=10)
    diagnostics = diagnose(evidence, llc=level, llc_se=0.05, healthy=[0, 1, 2, 3])
    assert diagnostics.has("exceeds_bound") == flagged
    if flagged:
        message = next(m for m in diagnostics.messages() if "exceeds d/2" in m)
        assert "d/2 = 5," in message


def test_a_chain_explodes_above_ten_times_the_largest_equilibrium_rise():
    # L(w*) = 0: the scale is (d/2) / nbeta = 5 / 50 = 0.1, the limit 10 x 0.1 = 1.
    evidence = evidence_with_llc(1.0, n_params=10)
    evidence.init_loss = 0.0
    losses = np.full((4, 300), 0.05)
    losses[1, 100] = 0.9  # a rise below the limit
    losses[2, 200] = 1.1  # above it
    losses[3, 250] = np.nan  # non-finite
    evidence.loss_trace = losses
    assert exploded_chains(evidence) == [2, 3]


def test_gradient_bias_bound_and_steady_chains_raise_no_flag():
    # The bound on the gradient's bias at w*: nbeta^2 |grad L(w*)|^2 / gamma.
    evidence = evidence_with_llc(2.0, n_params=10)
    evidence.init_grad_norm = 0.3
    diagnostics = diagnose(evidence, llc=2.0, llc_se=0.01, healthy=[0, 1, 2, 3])
    assert diagnostics.gradient_bias_bound == pytest.approx(50.0**2 * 0.3**2 / 1.0)
    # steady, mixed chains: no drift (Geweke) and no disagreement (R-hat) flagged
    assert not diagnostics.has("burn_in") and not diagnostics.has("not_converged")


def clean_diagnostics() -> LLCDiagnostics:
    """Numbers that pass every check: converged, stationary, w* a minimum."""
    return LLCDiagnostics(
        r_hat=1.0,
        ess=1000.0,
        geweke_z=0.0,
        settling_step=10,
        chains_below_init=0,
        lowest_chain_loss=1.04,
        diverged_chains=[],
        init_grad_norm=0.0,
        gradient_bias_bound=None,
        localization_share=None,
        stationary=True,
        loss_gap=-0.01,
    )


def flags_of(diag: LLCDiagnostics, llc: float = 2.0, llc_se: float = 0.05) -> set:
    """The codes ``findings`` raises for ``diag`` on four healthy chains of d = 10."""
    evidence = evidence_with_llc(2.0, n_params=10)
    return {f.code for f in findings(evidence, diag, llc, llc_se, n_healthy=4)}


def test_clean_numbers_raise_no_finding():
    assert flags_of(clean_diagnostics()) == set()


@pytest.mark.parametrize(
    ("geweke", "flagged"),
    # |z| > 3 flags a short burn-in; exactly 3 does not; a z that is not a
    # number (too few draws: convergence.geweke_z returns NaN) says nothing.
    [(3.0, False), (3.001, True), (-3.001, True), (-2.9, False), (float("nan"), False)],
)
def test_the_burn_in_flag_fires_above_three_standard_errors(geweke, flagged):
    diag = clean_diagnostics()
    diag.geweke_z = geweke
    assert ("burn_in" in flags_of(diag)) == flagged


def test_a_drifting_start_is_flagged_as_a_short_burn_in():
    # The first 10% of the draws sit 0.5 above a level of 2 with noise 0.01:
    # Geweke's z is far above 3 (hundreds of standard errors).
    evidence = evidence_with_llc(2.0, n_params=10)
    evidence.llc_trace[:, 50:75] += 0.5
    diagnostics = diagnose(evidence, llc=2.0, llc_se=0.05, healthy=[0, 1, 2, 3])
    assert diagnostics.geweke_z > 3.0
    assert diagnostics.has("burn_in")


@pytest.mark.parametrize(
    ("bound", "llc", "llc_se", "flagged"),
    # The gradient's pull flags when it exceeds 10% of max(|LLC|, its SE):
    # 0.1 x 2.0 = 0.2 exactly in binary floating point.
    [
        (0.2, 2.0, 0.05, False),
        (0.2000001, 2.0, 0.05, True),
        (0.25, -3.0, 0.05, False),  # |LLC| = 3: 10% is 0.3
        (0.35, -3.0, 0.05, True),
        (0.15, 0.1, 2.0, False),  # the SE (2.0) sets the scale: 10% is 0.2
        (0.25, 0.1, 2.0, True),
    ],
)
def test_not_critical_fires_above_ten_percent_of_the_estimate(
    bound, llc, llc_se, flagged
):
    diag = clean_diagnostics()
    diag.gradient_bias_bound = bound
    assert ("not_critical" in flags_of(diag, llc=llc, llc_se=llc_se)) == flagged


@pytest.mark.parametrize(
    ("gap", "batch_sd", "saddle"),
    # Allowed dip below L(w*) = 1: 1e-6 (rounding) + 5 minibatch-loss SDs.
    [
        (0.5e-6, 0.0, False),
        (1e-6, 0.0, False),  # exactly the allowance: not beyond it
        (2e-6, 0.0, True),
        (0.045, 0.01, False),  # 4.5 SDs: noise
        (0.055, 0.01, True),  # 5.5 SDs: descent
    ],
)
def test_descending_below_w_star_beyond_five_batch_sds_is_a_saddle(
    gap, batch_sd, saddle
):
    evidence = evidence_with_llc(2.0, n_params=10)
    evidence.batch_loss_sd = batch_sd
    diag = clean_diagnostics()
    diag.loss_gap = gap
    found = saddle_findings(evidence, diag, llc=2.0)
    assert [f.code for f in found] == (["saddle"] if saddle else [])
    if saddle and gap == 0.055:  # nbeta x gap = 50 x 0.055
        assert "went 0.055 below" in found[0].message
        assert "nbeta x that = 2.75)" in found[0].message


def curvature(lowest: float, highest: float) -> CurvatureReport:
    """A Lanczos report with these extreme eigenvalues (direction: one weight)."""
    return CurvatureReport(
        lowest=lowest,
        highest=highest,
        direction_shares=[("w", 1.0)],
        top_coordinates=[("w", (0,), 1.0)],
        dimension=10,
        n_params=10,
        iterations=10,
    )


@pytest.mark.parametrize(
    ("lowest", "highest", "codes"),
    # nbeta = 50, localization 1.  An eigenvalue counts as negative below
    # -1e-4 x |highest| (else it is rounding); it is a saddle when
    # nbeta x lowest + localization < 0, else the localising pull holds it.
    [
        (-0.5e-4, 1.0, []),  # within 1e-4 of the largest: zero
        (-2e-4, 1.0, ["negative_curvature"]),  # 50 x -2e-4 + 1 > 0: held
        (-0.01, 1.0, ["negative_curvature"]),  # 50 x -0.01 + 1 = 0.5: held
        (-0.03, 1.0, ["saddle"]),  # 50 x -0.03 + 1 = -0.5: unconfined
        (-0.5e-16, 0.0, []),  # a zero Hessian: the floor 1e-12 x 1e-4
        (-2e-16, 0.0, ["negative_curvature"]),
    ],
)
def test_negative_curvature_against_the_localising_pull(lowest, highest, codes):
    evidence = evidence_with_llc(2.0, n_params=10)
    diag = clean_diagnostics()
    diag.curvature = curvature(lowest, highest)
    assert [f.code for f in saddle_findings(evidence, diag, llc=2.0)] == codes


@pytest.mark.parametrize(
    ("near", "far", "share"),
    # d / localization = 10 / 4 = 2.5; the draws alternate between two
    # distances from w*, so the mean squared distance is (near^2 + far^2) / 2.
    [(1.0, 2.0, 1.0), (0.5, 1.0, 0.25)],
)
def test_localization_share_is_the_mean_squared_distance_over_d_by_gamma(
    near, far, share
):
    evidence = evidence_with_llc(2.0, n_params=10)
    evidence.localization = 4.0
    distances = np.full((4, 300), 100.0)  # burn-in: far away, left out
    distances[:, 50::2], distances[:, 51::2] = near, far
    evidence.distance_trace = distances
    diagnostics = diagnose(evidence, llc=2.0, llc_se=0.05, healthy=[0, 1, 2, 3])
    assert diagnostics.localization_share == pytest.approx(share, rel=1e-12)
    assert diagnostics.has("localization_dominates") == (share > 0.5)


def test_no_localization_means_no_share_and_no_gradient_bound():
    evidence = evidence_with_llc(2.0, n_params=10)
    evidence.localization = 0.0
    evidence.init_grad_norm = 0.3
    diagnostics = diagnose(evidence, llc=2.0, llc_se=0.05, healthy=[0, 1, 2, 3])
    assert diagnostics.localization_share is None
    assert diagnostics.gradient_bias_bound is None


@pytest.mark.parametrize(
    ("field", "value", "llc", "llc_se", "codes"),
    # Each check at its threshold (not flagged) and just past it (flagged);
    # d = 10, so d/2 = 5.
    [
        ("r_hat", 1.1, 2.0, 0.05, set()),
        ("r_hat", 1.1001, 2.0, 0.05, {"not_converged"}),
        ("r_hat", float("nan"), 2.0, 0.05, set()),  # one chain: no R-hat
        (None, None, -0.01, 0.05, {"negative"}),
        (None, None, 0.0, 0.05, {"near_zero"}),
        (None, None, 0.0999, 0.05, {"near_zero"}),
        (None, None, 0.1, 0.05, set()),  # exactly 2 SEs from zero
        (None, None, 5.5, 0.25, set()),  # 5.5 - 2 x 0.25 = 5 = d/2
        (None, None, 5.5, 0.24, {"exceeds_bound"}),
        ("acceptance", 0.9, 2.0, 0.05, set()),
        ("acceptance", 0.89, 2.0, 0.05, {"low_acceptance"}),
        ("stationary", False, 2.0, 0.05, {"not_stationary"}),
        ("localization_share", 0.5, 2.0, 0.05, set()),
        ("localization_share", 0.51, 2.0, 0.05, {"localization_dominates"}),
    ],
)
def test_each_check_fires_just_past_its_threshold(field, value, llc, llc_se, codes):
    diag = clean_diagnostics()
    if field is not None:
        setattr(diag, field, value)
    assert flags_of(diag, llc=llc, llc_se=llc_se) == codes


def test_severities_and_their_order():
    evidence = evidence_with_llc(2.0, n_params=10)
    diag = clean_diagnostics()
    diag.diverged_chains = [3]
    diag.localization_share = 0.9
    diag.r_hat = 1.5
    found = findings(evidence, diag, llc=-1.0, llc_se=0.05, n_healthy=3)
    severity = {f.code: f.severity for f in found}
    assert severity == {
        "diverged": "warning",  # three chains are left
        "negative": "error",
        "not_converged": "warning",
        "localization_dominates": "info",
    }
    # messages(): errors first, then warnings, then info
    ranks = [m.split("]")[0] for m in diag_with(found).messages()]
    assert ranks == ["[error", "[warning", "[warning", "[info"]
    assert not diag_with(found).ok
    assert diag_with([f for f in found if f.severity == "info"]).ok


def diag_with(found: list) -> LLCDiagnostics:
    """Clean numbers carrying the findings ``found``."""
    diag = clean_diagnostics()
    diag.findings = found
    return diag


def test_no_healthy_chain_is_one_error_and_nothing_else():
    evidence = evidence_with_llc(2.0, n_params=10)
    diag = clean_diagnostics()
    diag.diverged_chains = [0, 1, 2, 3]
    found = findings(evidence, diag, llc=float("nan"), llc_se=0.0, n_healthy=0)
    assert [(f.code, f.severity) for f in found] == [("diverged", "error")]
    assert "4 of 4 chains diverged" in found[0].message


def test_chain_summaries_against_loops_over_the_traces():
    # Chain 2 diverged (left out); the others sit at different loss levels.
    rng = np.random.default_rng(1)
    evidence = evidence_with_llc(2.0, n_params=10)
    levels = [0.98, 1.03, 50.0, 0.99]
    losses = np.array([lvl + 0.001 * rng.standard_normal(300) for lvl in levels])
    losses[0, 0] = 0.5  # a dip before step 1 (the start) is not counted
    losses[1, 10] = 0.9  # a dip in the burn-in is
    evidence.loss_trace = losses
    evidence.acceptance_trace = rng.uniform(0.5, 1.0, size=(4, 300))
    healthy = [0, 1, 3]
    diagnostics = diagnose(evidence, llc=2.0, llc_se=0.05, healthy=healthy)
    means = {c: sum(losses[c, 50:]) / 250 for c in healthy}
    assert diagnostics.chains_below_init == sum(means[c] < 1.0 for c in healthy)
    assert diagnostics.chains_below_init == 2
    assert diagnostics.lowest_chain_loss == pytest.approx(min(means.values()))
    assert diagnostics.diverged_chains == [2]
    lowest_after_start = min(min(losses[c, 1:]) for c in healthy)
    assert lowest_after_start == 0.9
    assert diagnostics.loss_gap == pytest.approx(1.0 - 0.9)
    accepted = [
        evidence.acceptance_trace[c, t] for c in healthy for t in range(50, 300)
    ]
    assert diagnostics.acceptance == pytest.approx(sum(accepted) / len(accepted))


def test_a_chain_at_the_initial_loss_is_not_below_it():
    # chain 1 sits exactly at L(w*) = 1.0: "below" is strict
    evidence = evidence_with_llc(2.0, n_params=10)
    losses = np.ones((4, 300))
    losses[0] = 0.98
    evidence.loss_trace = losses
    evidence.acceptance_trace = np.full((4, 300), 0.8)
    diagnostics = diagnose(evidence, llc=2.0, llc_se=0.05, healthy=[0, 1, 2, 3])
    assert evidence.init_loss == 1.0
    assert diagnostics.chains_below_init == 1
