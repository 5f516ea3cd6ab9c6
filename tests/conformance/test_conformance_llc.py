"""The LLC's SAE loss at w*, batched and generic, against SAE-Lens's forward."""

from __future__ import annotations

import pytest
from conformance_saes import RTOL, SAECalls, activations, build_sae, cases
from sae_lens_ext_llc.sae import SAELoss
from sae_lens_ext_llc.sae_chains import chain_sae_loss

from sae_lens_ext import flat_rows

CASES = cases()
SPARSITY = 0.05
CHAINS = 2


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_loss_at_w_star_matches_forward(case):
    sae = build_sae(case)
    x, token_context, _ = activations()
    tokens = token_context.reshape(-1)
    seen = x.to(sae.W_dec.dtype)
    calls = SAECalls(case, sae, tokens)
    # reference: SAE-Lens's forward and codes, arithmetic in float64
    error = (calls.forward(x) - seen.double()).pow(2).sum(-1).mean()
    scale = float(seen.double().pow(2).sum(-1).mean())
    norms = sae.W_dec.detach().double().norm(dim=-1)
    penalty = (calls.encode(x).abs() * norms).sum(-1).mean()
    expected = float(error / scale + SPARSITY * penalty)

    loss = SAELoss(scale, SPARSITY)
    with flat_rows(sae), calls_bound(sae, tokens):
        generic = float(loss(sae, seen))
        batched = chain_sae_loss(sae, scale, SPARSITY)
        own = {
            name: p.detach()[None].expand(CHAINS, *p.shape)
            for name, p in sae.named_parameters()
        }
        chains = batched(own, seen) if batched is not None else None
    # the loss is summed in the SAE's dtype: its tolerance
    rtol = RTOL[case.dtype]
    assert generic == pytest.approx(expected, rel=rtol)
    if chains is not None:
        assert chains.shape == (CHAINS,)
        assert chains.double().tolist() == pytest.approx([expected] * CHAINS, rel=rtol)


def calls_bound(sae, tokens):
    """Token binding for a tokenized SAE (the LLC's caller binds them)."""
    from conformance_saes import bound_tokens

    return bound_tokens(sae, tokens)
