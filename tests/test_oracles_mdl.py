"""MDL quantisation against an independent midpoint decode (NumPy, no shared code).

The quantised reconstruction error of ``MDLAccumulator`` must equal the error
of decoding every non-zero activation at its bin's midpoint,
``sign(a) * (floor(|a| / p) + 1/2) * p``, written here from the definition
with NumPy and an explicit ``f @ W_dec + b_dec`` decode.  Decoding at a bin's
lower edge (or any other point) changes every quantised value by up to p/2,
which moves the error far beyond the float64 rounding allowed here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_sae
from sae_lens_ext_mdl import (
    MDLAccumulator,
    MDLConfig,
    QuantisedHistograms,
    binary_entropy,
    entropy_bits,
)


def midpoint(values: np.ndarray, precision: float) -> np.ndarray:
    """The bin midpoint of each value at bin width ``precision`` (0 stays 0)."""
    bins = np.floor(np.abs(values) / precision)
    return np.where(values == 0, 0.0, np.sign(values) * (bins + 0.5) * precision)


def test_dequantise_returns_hand_computed_midpoints():
    hist = QuantisedHistograms(d_sae=1, precision=0.25)
    values = torch.tensor([0.3, -0.3, 0.1, 0.25, 1.99], dtype=torch.float64)
    # Bins of width 0.25: [0.25, 0.5) -> 0.375, [0, 0.25) -> 0.125, [1.75, 2) -> 1.875.
    expected = torch.tensor([0.375, -0.375, 0.125, 0.375, 1.875], dtype=torch.float64)
    assert torch.equal(hist.dequantise(values), expected)
    # One level coarser (width 0.5): [0, 0.5) -> 0.25, [1.5, 2) -> 1.75.
    coarse = torch.tensor([0.25, -0.25, 0.25, 0.25, 1.75], dtype=torch.float64)
    assert torch.equal(hist.dequantise(values, levels=1), coarse)


@pytest.mark.parametrize("linear_decoder", [True, False])
def test_quantised_error_equals_an_independent_midpoint_decode(linear_decoder):
    generator = torch.Generator().manual_seed(11)
    acts = torch.rand(400, 48, generator=generator) * 3
    acts = acts * (torch.rand(400, 48, generator=generator) < 0.15)
    sae = make_sae(d_sae=48)
    with torch.no_grad():
        x = sae.decode(acts) + 0.05 * torch.randn(400, 16, generator=generator)
    config = MDLConfig(finest_precision=2**-4, n_precisions=5)
    accumulator = MDLAccumulator(sae, config)
    accumulator.linear_decoder = linear_decoder
    for rows in torch.arange(400).split(150):
        accumulator.update(x[rows], acts[rows])

    w_dec = sae.W_dec.detach().double().numpy()
    b_dec = sae.b_dec.detach().double().numpy()
    a, target = acts.double().numpy(), x.double().numpy()
    for level in range(config.n_precisions):
        precision = config.finest_precision * 2**level
        recon = midpoint(a, precision) @ w_dec + b_dec
        expected = ((target - recon) ** 2).sum()
        # The SAE decodes in float32 (relative rounding ~1e-7, measured 5e-8);
        # a lower-edge decode moves the error by tens of percent at every level.
        assert accumulator.sq_err[level].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("counts", "bits"),
    [
        ([1, 1, 1, 1], 2.0),  # uniform over 4 symbols
        ([3, 0, 0], 0.0),  # one symbol: no information
        ([0, 0, 0], 0.0),  # an empty row
        ([1, 3], 2 - 0.75 * math.log2(3)),  # H(1/4) = 2 - (3/4) log2 3
        ([2, 1, 1], 1.5),  # probabilities 1/2, 1/4, 1/4
    ],
)
def test_entropy_bits_of_hand_computed_histograms(counts, bits):
    assert entropy_bits(torch.tensor(counts)).item() == pytest.approx(bits, abs=1e-12)


def test_entropy_bits_is_per_row():
    counts = torch.tensor([[[1, 1, 0, 0], [1, 1, 1, 1]], [[5, 0, 0, 0], [0, 2, 1, 1]]])
    expected = torch.tensor([[1.0, 2.0], [0.0, 1.5]], dtype=torch.float64)
    torch.testing.assert_close(entropy_bits(counts), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("p", [0.0, 0.11, 0.5, 0.9, 1.0])
def test_binary_entropy_closed_form(p):
    expected = sum(-q * math.log2(q) for q in (p, 1 - p) if q > 0)
    assert binary_entropy(p) == pytest.approx(expected, abs=1e-12)
