"""The meta-SAE's input rows against the directions SAE-Lens's decode moves in."""

from __future__ import annotations

import pytest
import torch
from conformance_saes import (
    Case,
    Float64Calls,
    activations,
    build_sae,
    cases,
    refused_architectures,
)
from sae_lens_ext_meta_sae.meta_sae import decoder_rows

# the meta-SAE needs only the decoder: transcoders and temporal SAEs too
CASES = cases() + [Case(arch) for arch in refused_architectures()]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_input_rows_are_the_decoder_directions(case):
    sae = build_sae(case)
    x, token_context, _ = activations()
    calls = Float64Calls(case, sae, token_context.reshape(-1))
    # decode(e_i) - decode(0), normalised, on a float64 copy of the weights
    # (exact); the plugin's float32 rows differ by float32 rounding: 1e-6
    expected = calls.directions(x)
    rows = decoder_rows(sae)
    assert rows.dtype == torch.float32
    assert torch.allclose(rows.double(), expected, atol=1e-6)
