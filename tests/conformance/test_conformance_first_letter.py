"""First-letter absorption's inputs to the scoring: each latent's contribution
along the probe and the projection, against SAE-Lens's decode."""

from __future__ import annotations

import importlib

import pytest
import torch
from conformance_saes import D_SAE, Case, Float64Calls, reference, run_case
from sae_lens_ext_absorption.config import AbsorptionConfig
from sae_lens_ext_absorption.letters import LetterRows

# the module (the package exports a function of the same name)
first_letter = importlib.import_module("sae_lens_ext_absorption.first_letter")

# the cases that moved the shortcut's numbers (the probes make each case
# slower than the others, so one per field)
CASES = [
    Case("topk", rescale=True),
    Case("topk", normalize="layer_norm"),
    Case("standard", normalize="constant_norm_rescale"),
    Case("standard", apply_b_dec_to_input=False),
]
N_LETTERS = 4


def letter_sample(x, tokens, codes) -> LetterRows:
    """The rows as the letter sampler keeps them, each token given a letter."""
    latents = torch.where(codes > 0, torch.arange(D_SAE), -1)
    return LetterRows(
        sae_in=x.float(),
        tokens=tokens,
        letters=tokens % N_LETTERS,
        code_latents=latents,
        code_values=torch.where(codes > 0, codes, 0.0).float(),
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scoring_inputs_match_decode(case, monkeypatch):
    sae, x, tokens, _ = run_case(case)
    ref = reference(case, sae, x, tokens)
    calls = Float64Calls(case, sae, tokens)
    seen = ref.sae_in
    contributions = calls.contributions(seen, ref.codes)  # [n, d_sae, d_in]
    centred = seen - calls.zero_code(seen)
    seen_calls = []
    real = first_letter._score_rows

    def spy(sample, rows, x_probe, direction, cosines, dec_norm, main, config):
        seen_calls.append((sample, rows, x_probe, direction, cosines, dec_norm))
        return real(sample, rows, x_probe, direction, cosines, dec_norm, main, config)

    monkeypatch.setattr(first_letter, "_score_rows", spy)
    config = AbsorptionConfig(max_k=2, test_fraction=0.3)
    sample = letter_sample(seen, tokens, ref.codes)
    first_letter.first_letter_absorption(sample, sae, config)
    assert len(seen_calls) == N_LETTERS
    for scored, rows, x_probe, direction, cosines, dec_norm in seen_calls:
        u = direction.double()
        # projection of x - decode(0) on the probe
        expected_projection = centred[rows] @ u
        assert torch.allclose(
            (x_probe[rows] @ direction).double(), expected_projection, atol=1e-4
        )
        # contribution of each stored latent: value x length x cosine
        latents = scored.code_latents[rows]
        used = latents >= 0
        safe = latents.clamp_min(0)
        got = scored.code_values[rows] * dec_norm[safe] * cosines[safe]
        along = contributions[rows] @ u  # [r, d_sae]
        expected = along.gather(1, safe)
        assert torch.allclose(got[used].double(), expected[used], atol=1e-4)
