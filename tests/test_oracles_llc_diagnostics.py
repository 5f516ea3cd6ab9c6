"""LLC diagnostics on synthetic chain traces whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
from sae_lens_ext_llc.diagnostics import ChainEvidence, diagnose, exploded_chains


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
