"""The meta-SAE's inference threshold against a brute-force global top-k n.

BatchTopK at inference is a JumpReLU whose threshold keeps the ``k n``
largest pre-activations of the whole decoder matrix.  The oracle sorts all
pre-activations, computed with SAE-Lens's own ``process_sae_in`` and the saved
weights, and takes the midpoint between the ``k n``-th and the next value.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens_ext_meta_sae import decoder_rows, planted_decoder, train_meta_sae
from test_meta_sae import sae_with_decoder


def test_threshold_is_the_midpoint_below_the_global_top_k_n():
    planted = planted_decoder(512, 48, 32, max_parts=3, noise=0.1, seed=1)
    sae = sae_with_decoder(planted.decoder)
    k = 2
    meta = train_meta_sae(
        sae, d_meta=32, k=k, steps=80, batch_size=256, seed=0, progress=False
    )
    rows = decoder_rows(sae)
    with torch.no_grad():
        pre = meta.process_sae_in(rows) @ meta.W_enc + meta.b_enc
    ranked = pre.flatten().sort(descending=True).values
    n_keep = k * len(rows)
    expected = float((ranked[n_keep - 1] + ranked[n_keep]) / 2)
    threshold = meta.threshold.detach()
    assert torch.all(threshold == threshold[0])  # one global threshold
    # Same float32 pre-activations up to summation order (~1e-6 relative);
    # the gap between neighbouring ranked values is ~1e-4 here.
    assert float(threshold[0]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    gap = float(ranked[n_keep - 1] - ranked[n_keep])
    assert gap > 1e-5  # the threshold is well defined: no tie at the boundary
    with torch.no_grad():
        assert int((meta.encode(rows) > 0).sum()) == n_keep
