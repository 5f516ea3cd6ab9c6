"""Quantised histograms against Python counters of each activation's symbol.

The oracle quantises every activation with ``math.floor`` at the precision
asked for (``2 floor(|a| / p) + (a < 0)``), counts symbols per latent in a
``collections.Counter`` and takes the entropy of the counts, the off symbol's
``n_tokens - non-zeros`` included.  A coarser level is counted directly at
``p * 2**levels`` (not by pooling bins), so ``coarsened`` is checked against
the definition.  Values sit well inside their bins (no rounding at an edge).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from sae_lens_ext_mdl import QuantisedHistograms

PRECISION = 0.25


def activations(n: int, d_sae: int, seed: int, spread: int = 60):
    """(latents, values): signed, non-zero, bins 0..spread-1 at 0.25 (a few far out)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randint(0, d_sae, (n,), generator=generator)
    bins = torch.randint(0, spread, (n,), generator=generator)
    bins[torch.rand(n, generator=generator) < 0.05] += 5000  # tail symbols
    inside = 0.1 + 0.8 * torch.rand(n, generator=generator)  # away from bin edges
    sign = torch.where(torch.rand(n, generator=generator) < 0.3, -1.0, 1.0)
    return latents, (sign * (bins + inside) * PRECISION).double()


def counters(latents, values, d_sae: int, precision: float) -> list[Counter]:
    """Per latent, the count of each non-zero symbol at ``precision``."""
    counts = [Counter() for _ in range(d_sae)]
    for latent, value in zip(latents.tolist(), values.tolist(), strict=True):
        symbol = 2 * math.floor(abs(value) / precision) + (1 if value < 0 else 0)
        counts[latent][symbol] += 1
    return counts


def entropy(counter: Counter, n_tokens: int) -> float:
    """Entropy in bits of the symbol counts plus the off symbol."""
    total = [*counter.values(), n_tokens - sum(counter.values())]
    return -sum(c / n_tokens * math.log2(c / n_tokens) for c in total if c)


@pytest.fixture
def small_slices(monkeypatch):
    """Slices and a tail buffer of a few values, so every loop runs many times."""
    import sae_lens_ext_mdl.histograms as histograms

    monkeypatch.setattr(histograms, "SLICE", 97)
    monkeypatch.setattr(histograms, "TAIL_BUFFER", 13)


@pytest.mark.parametrize("width", [None, 8, 400])
def test_histograms_equal_python_counters_at_every_level(small_slices, width):
    d_sae, n_tokens = 5, 1000
    latents, values = activations(1200, d_sae, seed=3)
    hist = QuantisedHistograms(d_sae, PRECISION, width=width)
    for part in torch.arange(1200).split(300):  # four batches of 250 tokens
        hist.add(latents[part], values[part], 250)
    assert hist.n_tokens == n_tokens
    if width == 8:
        assert hist.tail_keys.numel() > 0  # most symbols went to the tail
    for levels in range(5):
        coarse = hist if levels == 0 else hist.coarsened(levels)
        precision = PRECISION * 2**levels
        assert coarse.precision == precision
        expected = counters(latents, values, d_sae, precision)
        assert coarse.nonzero_counts().tolist() == [sum(c.values()) for c in expected]
        assert coarse.bins_used().tolist() == [len(c) for c in expected]
        bits = [entropy(c, n_tokens) for c in expected]
        assert coarse.entropy().tolist() == pytest.approx(bits, rel=1e-12, abs=1e-12)
        dense = coarse.counts
        for latent, counter in enumerate(expected):
            in_table = {s: c for s, c in counter.items() if s < coarse.width}
            row = {s: int(c) for s, c in enumerate(dense[latent].tolist()) if c}
            assert row == in_table


def test_symbols_and_midpoints_follow_the_definition():
    hist = QuantisedHistograms(2, PRECISION)
    values = torch.tensor([0.3, -0.3, 0.1, -0.01, 1.99, 7.0], dtype=torch.float64)
    # bins of 0.25: 1, 1, 0, 0, 7, 28; odd symbols are negative
    assert hist.symbols(values).tolist() == [2, 3, 0, 1, 14, 56]
    for levels in (0, 2):
        p = PRECISION * 2**levels
        expected = [
            math.copysign((math.floor(abs(v) / p) + 0.5) * p, v)
            for v in values.tolist()
        ]
        assert hist.dequantise(values, levels).tolist() == expected


def test_no_tokens_cost_nothing_and_empty_batches_count_tokens():
    hist = QuantisedHistograms(3, PRECISION)
    assert hist.entropy().tolist() == [0.0, 0.0, 0.0]
    hist.add(torch.zeros(0, dtype=torch.long), torch.zeros(0), 10)
    assert hist.n_tokens == 10 and hist.counts is None
    assert hist.entropy().tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    hist.add(torch.tensor([1]), torch.tensor([0.6]), 10)
    expected = -(1 / 20 * math.log2(1 / 20) + 19 / 20 * math.log2(19 / 20))
    assert hist.entropy().tolist() == pytest.approx([0.0, expected, 0.0], rel=1e-12)
    with pytest.raises(ValueError, match="levels"):
        hist.coarsened(-1)
    with pytest.raises(ValueError, match="precision"):
        QuantisedHistograms(3, 0.0)


@pytest.mark.parametrize("width", [None, 8, 400])
def test_ladder_statistics_equal_python_counters_at_every_level(small_slices, width):
    """The segment-sum pooling of non-empty cells (what MDL's result uses)
    against counts made directly at each coarser precision, tail included."""
    d_sae, n_tokens = 5, 1000
    latents, values = activations(1200, d_sae, seed=4)
    hist = QuantisedHistograms(d_sae, PRECISION, width=width)
    for part in torch.arange(1200).split(300):
        hist.add(latents[part], values[part], 250)
    if width == 8:
        assert hist.tail_keys.numel() > 0
    statistics = hist.ladder_statistics(6)
    assert statistics.entropy.shape == statistics.bins_used.shape == (6, d_sae)
    for level in range(6):
        expected = counters(latents, values, d_sae, PRECISION * 2**level)
        assert statistics.nonzero.tolist() == [sum(c.values()) for c in expected]
        assert statistics.bins_used[level].tolist() == [len(c) for c in expected]
        bits = [entropy(c, n_tokens) for c in expected]
        assert statistics.entropy[level].tolist() == pytest.approx(
            bits, rel=1e-12, abs=1e-12
        )
        coarse = hist.coarsened(level)
        assert torch.equal(statistics.bins_used[level], coarse.bins_used())
        torch.testing.assert_close(
            statistics.entropy[level], coarse.entropy(), rtol=1e-13, atol=1e-13
        )


def test_ladder_statistics_of_no_tokens_and_of_dead_latents():
    hist = QuantisedHistograms(3, PRECISION)
    assert hist.ladder_statistics(2).entropy.tolist() == [[0.0] * 3] * 2
    hist.add(torch.tensor([1, 1]), torch.tensor([0.6, -0.6]), 10)
    statistics = hist.ladder_statistics(2)
    # latent 1: off 8, bin 2 positive once, bin 2 negative once; signs stay apart
    expected = -(0.8 * math.log2(0.8) + 2 * 0.1 * math.log2(0.1))
    assert statistics.entropy[:, 1].tolist() == pytest.approx([expected] * 2)
    assert (
        statistics.entropy[:, [0, 2]].abs().max() < 1e-12
    )  # log2 10 - 10 log2 10 / 10
    assert statistics.bins_used.tolist() == [[0, 2, 0], [0, 2, 0]]


def test_a_symbol_equal_to_the_width_and_a_single_off_token_are_counted():
    # symbol 8 == width is the first one outside the table (it goes to the tail);
    # latent 0 is off on exactly one of the 6 tokens, so its off symbol's c log c is 0
    bins = torch.tensor([4, 0, 1, 4, 2, 3, 4])  # 2 * 4 = symbol 8 (positive values)
    values = ((bins + 0.5) * PRECISION).double()
    values[2] = -values[2]  # symbol 3
    latents = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    hist = QuantisedHistograms(2, PRECISION, width=8)
    hist.add(latents, values, 6)
    expected = counters(latents, values, 2, PRECISION)
    assert expected[0][8] == 2 and sum(expected[0].values()) == 5
    assert hist.nonzero_counts().tolist() == [5, 2]
    bits = [entropy(c, 6) for c in expected]
    assert hist.entropy().tolist() == pytest.approx(bits, rel=1e-12, abs=1e-12)
