"""Absorption's projections, per-latent contributions and overlaps against
SAE-Lens's decode of codes with one latent dropped."""

from __future__ import annotations

import pytest
import torch
from conformance_saes import (
    D_SAE,
    Float64Calls,
    absorption_config,
    cases,
    reference,
    run_case,
)
from conformance_saes import (
    RTOL as DTYPE_RTOL,
)

from sae_lens_ext.reconstruction import LINEAR_DECODERS

CASES = cases()
TOP_N = absorption_config().top_n
# The plugin computes projections and contributions in float32 from the
# same rows and codes as the float64 reference: float32 rounding of sums of
# 16 products of O(1) numbers, ~1e-6 relative; 1e-4 of the largest
# projection leaves room for the matrix-product order.  A subclass with
# code-independent terms (the tokenized SAE's token table) has its decode(0)
# from SAE-Lens in the SAE's dtype: that dtype's tolerance then.
FLOAT32_RTOL = 1e-4


def tolerance(case) -> float:
    """Relative tolerance of projections and contributions for ``case``."""
    if case.architecture in LINEAR_DECODERS:
        return FLOAT32_RTOL
    return max(FLOAT32_RTOL, DTYPE_RTOL[case.dtype])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_contributions_and_overlaps_match_decode(case):
    sae, x, tokens, out = run_case(case)
    ref = reference(case, sae, x, tokens)
    calls = Float64Calls(case, sae, tokens)
    seen = ref.sae_in
    directions = calls.directions(seen)  # [d_sae, d_in]
    projections = (seen - calls.zero_code(seen)) @ directions.T  # [n, d_sae]
    contributions = calls.contributions(seen, ref.codes)  # [n, d_sae, d_in]
    acc = out.absorption
    scale = float(projections.abs().max())
    RTOL = tolerance(case)

    # decoder top-N lists: rows with the largest projections (a near-tie at
    # the N-th may go either way), and their values
    decoder_top = []
    for latent in range(D_SAE):
        ids = acc.decoder.ids[latent]
        ids = ids[ids >= 0]
        column = projections[:, latent]
        assert len(ids) == TOP_N
        assert column[ids].min() >= column.sort(descending=True).values[TOP_N - 1] - (
            RTOL * scale
        ), latent
        values = acc.decoder.values[latent][: len(ids)].double()
        assert torch.allclose(values, column[ids], atol=RTOL * scale)
        decoder_top.append(set(ids.tolist()))

    # encoder lists: rows of the N largest positive codes (half-precision
    # codes tie, and a tie may go either way), with their values; overlaps
    result = acc.result()
    encoder_top = []
    for latent in range(D_SAE):
        ids = acc.encoder.ids[latent]
        ids = ids[ids >= 0]
        column = ref.codes[:, latent]
        positive = int((column > 0).sum())
        assert len(ids) == min(TOP_N, positive), latent
        if len(ids):
            nth = column.sort(descending=True).values[len(ids) - 1]
            assert bool((column[ids] >= nth).all()), latent
            values = acc.encoder.values[latent][: len(ids)].double()
            assert torch.equal(values.sort().values, column[ids].sort().values)
        encoder_top.append(set(ids.tolist()))
    overlap = [
        len(encoder_top[i] & decoder_top[i]) / max(len(decoder_top[i]), 1)
        for i in range(D_SAE)
    ]
    assert result.latents["overlap"].tolist() == pytest.approx(overlap)

    # every (latent, row, other latent) contribution along the latent's direction
    parts = acc._score(acc.store.rows())
    along = torch.einsum("rjd,id->irj", contributions, directions)  # [i, r, j]
    others = parts["code_latents"]  # [d_sae, N, m], -1 unused
    used = others >= 0
    assert used.any()
    latent_ids = torch.arange(D_SAE)[:, None, None].expand_as(others)
    row_ids = parts["row_ids"][:, :, None].expand_as(others)
    expected = along[latent_ids[used], row_ids[used], others[used]]
    got = (
        parts["code_shares"][used].double()
        * parts["projection"][..., None].expand_as(others)[used].double()
    )
    assert torch.allclose(got, expected, atol=RTOL * scale)
    # and every other active latent is there (codes_per_row holds them all)
    positive = ref.codes > 0
    rows = parts["row_ids"]
    for latent in range(0, D_SAE, 7):
        for slot, row in enumerate(rows[latent].tolist()):
            listed = set(others[latent, slot][used[latent, slot]].tolist())
            active = set(positive[row].nonzero()[:, 0].tolist()) - {latent}
            assert listed == active
    # the latent's own share: its activation times its decoder length
    own = parts["own_act"].double() * acc.dec_norm[:, None].double()
    own_expected = along[
        torch.arange(D_SAE)[:, None], rows, torch.arange(D_SAE)[:, None]
    ]
    assert torch.allclose(own, own_expected, atol=RTOL * scale)
