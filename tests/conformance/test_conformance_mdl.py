"""MDL's losses per precision against quantised codes decoded by SAE-Lens."""

from __future__ import annotations

import math

import pytest
import torch
from conformance_saes import RTOL, SAECalls, cases, reference, run_case
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens_ext_mdl.description_length import description_length

CASES = cases()


def quantise(codes: torch.Tensor, precision: float) -> torch.Tensor:
    """Each non-zero activation at its bin's midpoint (the method's rule)."""
    bins = torch.floor(codes.abs() / precision)
    return torch.where(codes != 0, codes.sign() * (bins + 0.5) * precision, 0.0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_quantised_loss_matches_decoded_quantised_codes(case):
    sae, x, tokens, out = run_case(case)
    ref = reference(case, sae, x, tokens)
    calls = SAECalls(case, sae, tokens)
    rtol = RTOL[case.dtype]
    result = out.mdl
    assert result.unquantised_loss == pytest.approx(ref.mse, rel=rtol)
    assert result.l0 == pytest.approx(float((ref.codes != 0).sum(1).double().mean()))
    for row in result.precisions.itertuples():
        # the code is quantised in float64 and handed to decode in the SAE's
        # dtype, as the plugin's dequantised values are
        decoded = calls.decode_after_encode(x, quantise(ref.codes, row.precision))
        mse = float((ref.sae_in - decoded).pow(2).mean())
        assert row.mse == pytest.approx(mse, rel=rtol), row.precision
        rise = (mse - ref.mse) / ref.mse
        # the rise is a difference of two MSEs, each within rtol
        assert row.relative_mse_increase == pytest.approx(
            rise, rel=rtol, abs=3 * rtol * mse / ref.mse
        ), row.precision


def identity_sae(width: int) -> StandardSAE:
    """A ReLU SAE with identity encoder and decoder: on non-negative inputs
    it reconstructs exactly (zero loss)."""
    sae = StandardSAE(StandardSAEConfig(d_in=width, d_sae=width))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(width))
        sae.W_dec.copy_(torch.eye(width))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_perfect_reconstruction_gives_the_exact_entropy():
    """Zero unquantised loss (a relative tolerance on a perfect
    reconstruction): no ZeroDivisionError; a lossy precision is an infinite
    relative increase, a lossless one none, and the answer is the code's
    exact entropy, in closed form from the symbol frequencies."""
    generator = torch.Generator().manual_seed(0)
    width, n = 4, 400
    # each latent is 0, 1/4 or 3/4, with probabilities that differ per latent;
    # bins of width 1/2 have midpoints 1/4 and 3/4: that precision is lossless
    probabilities = torch.tensor([[0.5, 0.25, 0.25], [0.7, 0.2, 0.1]] * 2)
    symbols = torch.multinomial(probabilities, n, replacement=True, generator=generator)
    x = torch.tensor([0.0, 0.25, 0.75])[symbols.T]  # [n, width]
    sae = identity_sae(width)
    assert torch.equal(sae(x), x)
    frequencies = torch.stack([(symbols == s).double().mean(1) for s in range(3)], 1)
    exact = float(-(frequencies * frequencies.clamp_min(1e-300).log2()).sum())

    # a ladder from the lossless precision up: it is chosen, at zero loss
    result = description_length(sae, [x], finest_precision=0.5, n_precisions=3)
    assert result.unquantised_loss == 0.0
    table = result.precisions.set_index("precision")
    assert table.loc[0.5, "mse"] == 0.0
    assert table.loc[0.5, "relative_mse_increase"] == 0.0
    assert (table.loc[[1.0, 2.0], "relative_mse_increase"] == math.inf).all()
    assert result.tolerance_met and result.precision == 0.5 and result.loss == 0.0
    assert result.bits_per_token == pytest.approx(exact, rel=1e-12)

    # a ladder whose finest precision is lossy: nothing meets the tolerance,
    # and the finest bins (one value each) still give the exact entropy
    with pytest.warns(UserWarning, match="no precision of the ladder"):
        result = description_length(sae, [x], finest_precision=2**-4, n_precisions=2)
    increases = result.precisions["relative_mse_increase"]
    assert (increases == math.inf).all()
    assert not result.tolerance_met
    assert result.bits_per_token == pytest.approx(exact, rel=1e-12)
