"""The base analysis's CE losses against a direct computation.

The SAE is spliced in by hand with a TransformerLens hook: its reconstruction
``decode(encode(x))`` (SAE-Lens's public methods) replaces the residual stream
at every position the shared pass used (all but BOS here), and the loss is
TransformerLens's mean next-token cross-entropy over all sequences.  Every
sequence is spliced (``ce_batches`` covers the 64 of them), so the order the
pass read them in does not matter.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_HOOK, make_sae, run_tiny

# Both sides run the same float32 forward pass on the same tokens; only the
# order of reductions may differ (float32 rounding, ~1e-7 relative), so 1e-5
# relative (4e-5 nats) is far above the noise.  Splicing this SAE moves the
# loss by 0.012 nats and zero-ablation by more, both >= 100x the tolerance.
RTOL = 1e-5


def hand_spliced_losses(model, sae, tokens) -> dict[str, float]:
    """Clean, spliced and zero-ablated CE, the SAE and zeros applied by hand."""

    def splice(acts, hook):
        out = acts.clone()
        out[:, 1:] = sae.decode(sae.encode(acts[:, 1:]))
        return out

    def zero(acts, hook):
        out = acts.clone()
        out[:, 1:] = 0
        return out

    with torch.no_grad():
        return {
            "ce_loss_clean": model(tokens, return_type="loss").item(),
            "ce_loss_spliced": model.run_with_hooks(
                tokens, return_type="loss", fwd_hooks=[(TINY_HOOK, splice)]
            ).item(),
            "ce_loss_zero_ablated": model.run_with_hooks(
                tokens, return_type="loss", fwd_hooks=[(TINY_HOOK, zero)]
            ).item(),
        }


def test_ce_losses_match_the_sae_spliced_by_hand(tiny_model, tiny_tokens, tmp_path):
    sae = make_sae()
    output = run_tiny(
        tiny_model,
        tiny_tokens,
        tmp_path / "run",
        sae=sae,
        n_tokens=64 * 12,  # all 64 sequences (BOS positions are skipped)
        batch_size=8,
        config={"base": {"ce_batches": 8}},
    )
    metrics = output.summary["analyses"]["base"]["metrics"]
    expected = hand_spliced_losses(tiny_model, sae, tiny_tokens)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=RTOL), name
    clean, spliced = expected["ce_loss_clean"], expected["ce_loss_spliced"]
    zeroed = expected["ce_loss_zero_ablated"]
    assert metrics["ce_loss_recovered"] == pytest.approx(
        (zeroed - spliced) / (zeroed - clean), rel=1e-4
    )
    # The splice changes the loss by far more than the tolerance: the check can fail.
    assert abs(spliced - clean) > 100 * RTOL * clean
    assert abs(zeroed - spliced) > 100 * RTOL * clean
