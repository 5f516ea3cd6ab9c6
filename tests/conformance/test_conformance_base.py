"""The host's base analysis against SAE-Lens's forward on every case."""

from __future__ import annotations

import pytest
from conformance_saes import RTOL, cases, reference, run_case

CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_base_metrics_match_forward(case):
    sae, x, tokens, out = run_case(case)
    ref = reference(case, sae, x, tokens)
    metrics = out.base
    rtol = RTOL[case.dtype]
    assert metrics["mse"] == pytest.approx(ref.mse, rel=rtol)
    # L0 counts codes: identical up to activations on the edge of a
    # threshold, none on these rows
    assert metrics["l0"] == pytest.approx(
        float((ref.codes != 0).sum(1).double().mean())
    )
    centred = ref.sae_in - ref.sae_in.mean(0)
    explained = 1 - (ref.sae_in - ref.forward).pow(2).sum() / centred.pow(2).sum()
    # 1 - EV is the MSE ratio: the MSE's tolerance carries over to it
    assert 1 - metrics["explained_variance"] == pytest.approx(
        float(1 - explained), rel=rtol
    )
