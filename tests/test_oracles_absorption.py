"""Absorption scoring against hand-worked cases of SAEBench's definition.

SAEBench (``FeatureAbsorptionCalculator.calculate_absorption``) scores one
input from its probe projection ``P``, the main latents' projection ``M`` and
the sum ``T`` of the (at most three) largest positive projections of other
latents whose decoder cosine with the probe is at least 0.1:

- 0 when ``M >= P`` or ``T / P < 0.4``;
- 1 when ``M <= 0``;
- else ``A / (A + M)`` with ``A = min(T, P - M)``, clipped to [0, 1].

Full absorption: no main latent fires, ``P >= 0``, the single largest
projection comes from a latent with cosine >= 0.025 and is >= 0.4 P.
Each expected value below is worked by hand from those rules.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens_ext_absorption.scoring import absorption_scores

SHARE, COS = 0.4, 0.1


def score(projection, main, contributions, cosines, main_active=None):
    """Score one input with SAEBench's thresholds."""
    if main_active is None:
        main_active = main != 0
    return absorption_scores(
        torch.tensor([projection]),
        torch.tensor([main]),
        torch.tensor([main_active]),
        torch.tensor([contributions]),
        torch.tensor([cosines]),
        share_threshold=SHARE,
        cos_threshold=COS,
    )


CASES = [
    # (P, M, contributions, cosines, fraction, why)
    # T = 5 + 4 + 3 = 12 > P - M = 8: A = 8, fraction 8 / (8 + 2) = 0.8 (A = T gives 12/14).
    (10.0, 2.0, [5.0, 4.0, 3.0, 1.0], [0.5, 0.5, 0.5, 0.5], 0.8, "T > P - M"),
    # T = 3 + 2 + 0.5 = 5.5 <= P - M = 8: A = T, fraction 5.5 / 7.5.
    (10.0, 2.0, [3.0, 2.0, 0.5], [0.5, 0.5, 0.5], 5.5 / 7.5, "T < P - M"),
    # Only the three largest count: T = 4 + 3 + 2 = 9 >= 0.4 * 20, A = 9, 9 / 11.
    (20.0, 2.0, [1.0, 4.0, 2.0, 3.0], [0.5] * 4, 9 / 11, "top three only"),
    # The 5.0 latent's cosine 0.05 < 0.1 excludes it: T = 4 = 0.4 P exactly (kept).
    (10.0, 2.0, [5.0, 4.0], [0.05, 0.5], 4 / 6, "cosine threshold, share boundary"),
    # A cosine exactly at the threshold counts (SAEBench: >=): T = 4 + 3, A = 7.
    (10.0, 2.0, [4.0, 3.0], [0.1, 0.1], 7 / 9, "cosine at the threshold"),
    # A small negative contribution is no absorber either: T = 5, A = 5, 5 / 7.
    (10.0, 2.0, [5.0, -0.5], [0.5, 0.5], 5 / 7, "small negative contribution"),
    # A main projection below 1 still gives a partial fraction: 5 / 5.5.
    (10.0, 0.5, [5.0], [0.5], 5 / 5.5, "0 < M < 1"),
    # A negative contribution is no absorber: T = 3 < 0.4 * 10.
    (10.0, 2.0, [3.0, -6.0], [0.5, -0.5], 0.0, "T / P below 0.4"),
    # The main latents carry the whole projection.
    (5.0, 6.0, [5.0], [0.5], 0.0, "M >= P"),
    # Main latents off (M = 0) with enough absorbed: fully absorbed.
    (10.0, 0.0, [5.0], [0.5], 1.0, "M = 0"),
    # Main latents pointing against the probe count as M <= 0.
    (10.0, -1.0, [5.0], [0.5], 1.0, "M < 0"),
    # A negative projection: M = 0 >= P, so no absorption.
    (-1.0, 0.0, [5.0], [0.5], 0.0, "P < 0"),
    # M < P < 0: T / P = -5 < 0.4, so no absorption.
    (-1.0, -2.0, [5.0], [0.5], 0.0, "M < P < 0"),
    # P = 0 (SAEBench divides by zero here; ours: no absorption without a projection).
    (0.0, -1.0, [5.0], [0.5], 0.0, "P = 0"),
]


@pytest.mark.parametrize(
    ("projection", "main", "contributions", "cosines", "fraction"),
    [case[:5] for case in CASES],
    ids=[case[5] for case in CASES],
)
def test_absorption_fraction_matches_saebench_worked_cases(
    projection, main, contributions, cosines, fraction
):
    scores = score(projection, main, contributions, cosines)
    assert scores.fraction.item() == pytest.approx(fraction, abs=1e-6)


def test_cases_score_together_as_one_batch():
    # Padding to a common width with unused slots (contribution 0, cosine 0)
    # must not change any case.
    width = max(len(case[2]) for case in CASES)
    contributions = [case[2] + [0.0] * (width - len(case[2])) for case in CASES]
    cosines = [case[3] + [0.0] * (width - len(case[3])) for case in CASES]
    scores = absorption_scores(
        torch.tensor([case[0] for case in CASES]),
        torch.tensor([case[1] for case in CASES]),
        torch.tensor([case[1] != 0 for case in CASES]),
        torch.tensor(contributions),
        torch.tensor(cosines),
        share_threshold=SHARE,
        cos_threshold=COS,
    )
    expected = torch.tensor([case[4] for case in CASES])
    torch.testing.assert_close(scores.fraction, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("projection", "main_active", "contributions", "cosines", "full", "slot"),
    [
        # Main off, the largest (slot 1, 6 >= 0.4 * 10, cos 0.03 >= 0.025): full.
        (10.0, False, [2.0, 6.0], [0.9, 0.03], True, 1),
        # The largest carries exactly 0.4 of the projection (SAEBench: >=): full.
        (10.0, False, [2.0, 4.0], [0.9, 0.5], True, 1),
        # Same, but a main latent fires: not full absorption.
        (10.0, True, [2.0, 6.0], [0.9, 0.03], False, 1),
        # The largest latent's cosine 0.02 < 0.025: not full.
        (10.0, False, [2.0, 6.0], [0.9, 0.02], False, 1),
        # The largest carries 3.9 < 0.4 * 10 even though together they carry more.
        (10.0, False, [3.0, 3.9], [0.9, 0.9], False, 1),
        # A projection below 1: the share is 0.3 / 0.5 = 0.6 >= 0.4, full.
        (0.5, False, [0.1, 0.3], [0.9, 0.5], True, 1),
        # Only negative contributions: no top latent at all.
        (10.0, False, [-1.0, -2.0], [0.9, 0.9], False, -1),
        # Nothing positive fires: no top latent at all.
        (10.0, False, [-1.0, 0.0], [0.9, 0.9], False, -1),
    ],
)
def test_full_absorption_matches_saebench_worked_cases(
    projection, main_active, contributions, cosines, full, slot
):
    scores = score(projection, 0.0, contributions, cosines, main_active=main_active)
    assert bool(scores.full.item()) is full
    assert scores.top_slot.item() == slot


@pytest.mark.parametrize(
    ("projection", "share"),
    [(0.5, 0.6), (10.0, 0.03), (-0.5, 0.0), (0.0, 0.0)],
)
def test_top_share_is_the_largest_contribution_over_a_positive_projection(
    projection, share
):
    scores = score(projection, 0.0, [0.1, 0.3], [0.9, 0.5], main_active=False)
    assert scores.top_share.item() == pytest.approx(share, abs=1e-6)


def test_inputs_without_other_active_latents_score_zero():
    scores = absorption_scores(
        torch.tensor([10.0, 10.0]),
        torch.tensor([2.0, 0.0]),
        torch.tensor([True, False]),
        torch.zeros(2, 0),
        torch.zeros(2, 0),
        share_threshold=SHARE,
        cos_threshold=COS,
    )
    assert scores.fraction.tolist() == [0.0, 0.0]
    assert scores.full.tolist() == [False, False]
    assert scores.top_slot.tolist() == [-1, -1]


def test_thresholds_are_keyword_only():
    # the three thresholds are floats of similar size: passed by position they
    # would be easy to swap, so the signature refuses it
    args = [torch.ones(1), torch.zeros(1), torch.ones(1, 1)]
    args += [torch.zeros(1, 1), torch.zeros(1, 1)]
    with pytest.raises(TypeError, match="positional"):
        absorption_scores(*args, 0.5, 0.025, 0.1)
