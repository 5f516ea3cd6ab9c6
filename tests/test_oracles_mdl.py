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
from sae_lens import (
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens_ext_mdl import (
    MDLAccumulator,
    MDLConfig,
    QuantisedHistograms,
    binary_entropy,
    entropy_bits,
)

from sae_lens_ext import code_map


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


def _sae_unlike_ours(kind: str):
    """SAE-Lens SAEs whose decode is not ``f @ W_dec + b_dec`` with unit rows."""
    d_in, d_sae = 12, 40
    if kind == "jumprelu-fp16":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float16"))
    elif kind == "topk-rescaled":
        sae = TopKSAE(
            TopKSAEConfig(
                d_in=d_in, d_sae=d_sae, k=8, rescale_acts_by_decoder_norm=True
            )
        )
    else:
        normalize = "constant_norm_rescale" if kind == "relu-normalised" else "none"
        sae = StandardSAE(
            StandardSAEConfig(d_in=d_in, d_sae=d_sae, normalize_activations=normalize)
        )
    generator = torch.Generator().manual_seed(21)
    with torch.no_grad():
        norms = 0.5 + 7.5 * torch.rand(d_sae, 1, generator=generator)  # 0.5 .. 8
        w_dec = torch.randn(d_sae, d_in, generator=generator)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True) * norms)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator))
    return sae


@pytest.mark.parametrize(
    "kind", ["jumprelu-fp16", "relu-normalised", "topk-rescaled", "relu-plain"]
)
def test_sparse_mover_equals_sae_lens_decode_of_moved_codes(kind):
    """``CodeMap.mover`` (the CSR product MDL uses for every precision) against
    SAE-Lens's own ``decode`` of the code before and after the move, on
    non-unit decoders (row norms 0.5-8), decoder-norm rescaling, input
    normalisation and fp16, with the entries handed over out of order."""
    sae = _sae_unlike_ours(kind)
    dtype = sae.W_dec.dtype
    generator = torch.Generator().manual_seed(22)
    x = (3 * torch.randn(64, 12, generator=generator)).to(dtype)
    code = torch.rand(64, 40, generator=generator) * 4
    code = (code * (torch.rand(64, 40, generator=generator) < 0.2)).to(dtype)
    rows, latents = code.nonzero(as_tuple=True)
    shuffle = torch.randperm(len(rows), generator=generator)
    rows, latents = rows[shuffle], latents[shuffle]
    mover = code_map(sae).mover(x, rows, latents)
    for precision in (0.03, 0.5, 2.0):
        quantised = QuantisedHistograms(1, precision).dequantise(code[rows, latents])
        moved_code = code.clone()
        moved_code[rows, latents] = quantised
        with torch.no_grad():  # encode sets the per-row normalisation state
            sae.encode(x)
            before = sae.decode(code).double()
            sae.encode(x)
            after = sae.decode(moved_code).double()
        move = mover(quantised.double() - code[rows, latents].double())
        # the reference rounds each decode to the SAE's dtype: a few ulps of
        # the output's magnitude (0.03 at fp16 for outputs near 40)
        ulp = torch.finfo(dtype).eps * float(after.abs().max())
        torch.testing.assert_close(move, after - before, rtol=0, atol=4 * ulp)
        if precision == 2.0:  # a real move, far above the rounding
            assert float((after - before).abs().max()) > 30 * ulp
