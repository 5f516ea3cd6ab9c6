"""MDL plugin: closed-form entropies, streaming = offline, errors, the analysis."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_sae
from sae_lens_ext_mdl import (
    MDLAccumulator,
    MDLConfig,
    QuantisedHistograms,
    binary_entropy,
    compare_saes,
    description_length,
)

from sae_lens_ext import run


def test_bernoulli_latent_costs_binary_entropy():
    generator = torch.Generator().manual_seed(0)
    on = torch.rand(10_000, generator=generator) < 0.3
    hist = QuantisedHistograms(d_sae=1, precision=0.25)
    hist.add(
        torch.zeros(int(on.sum()), dtype=torch.long), torch.ones(int(on.sum())), 10_000
    )
    p = int(on.sum()) / 10_000
    assert hist.entropy()[0].item() == pytest.approx(binary_entropy(p), rel=1e-9)


@pytest.mark.parametrize("b", [1, 3, 5])
def test_uniform_over_2_to_the_b_bins_costs_b_bits(b):
    precision = 0.1
    values = (torch.arange(2**b).repeat(50) + 0.5) * precision
    hist = QuantisedHistograms(d_sae=1, precision=precision)
    hist.add(torch.zeros(len(values), dtype=torch.long), values, len(values))
    assert hist.entropy()[0].item() == pytest.approx(b, abs=1e-12)


def sparse_codes(n=3000, d_sae=48, seed=0):
    """Non-negative sparse activations, about 6 active latents per row."""
    generator = torch.Generator().manual_seed(seed)
    acts = torch.rand(n, d_sae, generator=generator) * 3
    keep = torch.rand(n, d_sae, generator=generator) < 0.12
    return acts * keep


def offline_entropy(acts: torch.Tensor, precision: float) -> torch.Tensor:
    """Entropy per latent from all activations at once, by counting symbols."""
    symbols = torch.where(
        acts == 0, torch.full_like(acts, -1.0), torch.floor(acts.double() / precision)
    )
    result = []
    for column in symbols.T:
        _, counts = torch.unique(column, return_counts=True)
        p = counts.double() / len(column)
        result.append(-(p * torch.log2(p)).sum())
    return torch.stack(result)


def test_streaming_equals_offline_computation():
    acts = sparse_codes()
    sae = make_sae(d_sae=acts.shape[1])
    config = MDLConfig(finest_precision=0.05, n_precisions=4)
    accumulator = MDLAccumulator(sae, config)
    for chunk in acts.split(257):
        accumulator.update(torch.randn(len(chunk), 16), chunk)
    for hist in accumulator.histograms():
        streamed = hist.entropy()
        exact = offline_entropy(acts, hist.precision)
        torch.testing.assert_close(streamed, exact, rtol=1e-6, atol=1e-9)


def test_tail_symbols_count_like_dense_ones(monkeypatch):
    import sae_lens_ext_mdl.histograms as histograms

    monkeypatch.setattr(histograms, "TAIL_BUFFER", 50)  # merge often
    generator = torch.Generator().manual_seed(1)
    first = torch.rand(2000, generator=generator)  # sets a narrow dense width
    later = torch.rand(2000, generator=generator) * 40 - 20  # mostly tail, signed
    latents = torch.randint(0, 3, (4000,), generator=generator)
    values = torch.cat([first, later])
    split = QuantisedHistograms(d_sae=3, precision=0.1)
    split.add(latents[:2000], first, 2000)
    split.add(latents[2000:], later, 2000)
    assert split.tail_keys.numel() > 0
    wide = QuantisedHistograms(d_sae=3, precision=0.1, width=1000)
    wide.add(latents, values, 4000)
    assert wide.tail_keys.numel() == 0
    for levels in range(6):
        a, b = split.coarsened(levels), wide.coarsened(levels)
        torch.testing.assert_close(a.entropy(), b.entropy(), rtol=1e-12, atol=1e-12)
        assert torch.equal(a.bins_used(), b.bins_used())
        assert torch.equal(a.nonzero_counts(), b.nonzero_counts())


def test_sparse_quantisation_error_equals_dense_decode():
    acts = sparse_codes(seed=5)
    sae = make_sae(d_sae=acts.shape[1])
    with torch.no_grad():
        x = sae.decode(acts) + 0.01 * torch.randn(len(acts), 16)
    errors = []
    for linear in (True, False):
        accumulator = MDLAccumulator(sae, MDLConfig(n_precisions=6))
        assert accumulator.code_map is not None
        if not linear:  # SAE-Lens's decode of the quantised code instead
            accumulator.code_map = None
        accumulator.update(x, acts)
        errors.append(accumulator.sq_err)
    assert errors[0][-1] > errors[0][0]
    torch.testing.assert_close(errors[0], errors[1], rtol=1e-6, atol=0)


def test_result_tables_equal_pooled_histograms_at_every_rung():
    """The result's bits per rung and its latents table (computed from the
    non-empty cells in one pass) against each rung's own pooled histogram."""
    acts = sparse_codes(seed=7)
    sae = make_sae(d_sae=acts.shape[1])
    accumulator = MDLAccumulator(sae, MDLConfig(finest_precision=2**-6))
    for chunk in acts.split(700):
        accumulator.update(torch.randn(len(chunk), 16), chunk)
    result = accumulator.result()
    hists = list(accumulator.histograms())
    bits = [h.entropy().sum().item() for h in hists]
    assert result.precisions["bits_per_token"].tolist() == pytest.approx(
        bits, rel=1e-12
    )
    chosen = hists[int(result.precisions["chosen"].to_numpy().argmax())]
    assert chosen.precision == result.precision
    torch.testing.assert_close(
        torch.tensor(result.latents["entropy_bits"].to_numpy()),
        chosen.entropy(),
        rtol=1e-12,
        atol=1e-12,
    )
    assert result.latents["bins_used"].tolist() == chosen.bins_used().tolist()
    firing = chosen.nonzero_counts() / len(acts)
    assert result.latents["firing_frequency"].tolist() == firing.tolist()


def test_coarser_precision_never_increases_entropy():
    acts = sparse_codes(seed=3)
    sae = make_sae(d_sae=acts.shape[1])
    accumulator = MDLAccumulator(
        sae, MDLConfig(finest_precision=2**-8, n_precisions=10)
    )
    accumulator.update(torch.randn(len(acts), 16), acts)
    per_latent = torch.stack([h.entropy() for h in accumulator.histograms()])
    assert (per_latent[1:] <= per_latent[:-1] + 1e-12).all()
    assert per_latent[0].sum() > per_latent[-1].sum()


def test_chosen_precision_is_the_coarsest_within_tolerance(tiny_model, tiny_tokens):
    sae = make_sae()
    _, cache = tiny_model.run_with_cache(
        tiny_tokens, names_filter="blocks.0.hook_resid_post"
    )
    x = cache["blocks.0.hook_resid_post"][:, 1:].reshape(-1, 16)
    result = description_length(sae, x.split(100), tolerance=0.02)
    table = result.precisions
    ok = table[table["relative_mse_increase"] <= 0.02]
    assert result.precision == ok["precision"].max()
    assert result.tolerance_met
    coarser = table[table["precision"] > result.precision]
    assert (coarser["relative_mse_increase"] > 0.02).any() or coarser.empty
    assert result.bits_per_token == pytest.approx(result.latents["entropy_bits"].sum())
    assert result.naive_bound_bits > 0


def test_negative_activations_for_relu_sae_are_rejected():
    sae = make_sae()
    acts = sparse_codes(n=10)
    acts[0, 0] = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        MDLAccumulator(sae, MDLConfig()).update(torch.randn(10, 16), acts)


def test_all_dead_sae_is_rejected():
    sae = make_sae()
    accumulator = MDLAccumulator(sae, MDLConfig())
    accumulator.update(torch.randn(10, 16), torch.zeros(10, 48))
    with pytest.raises(ValueError, match="dead"):
        accumulator.result()


@pytest.mark.parametrize("precision", [0.0, -0.1])
def test_non_positive_precision_is_rejected(precision):
    with pytest.raises(ValueError, match="precision must be > 0"):
        MDLAccumulator(make_sae(), MDLConfig(precision=precision))


def test_mdl_analysis_in_a_run(tiny_model, tiny_tokens, tmp_path):
    output = run(
        sae=make_sae(),
        model=tiny_model,
        dataset=tiny_tokens,
        plugins=["mdl"],
        config={"mdl": {"loss": "ce", "tolerance": 0.05}},
        out_dir=tmp_path / "run",
        n_tokens=500,
    )
    metrics = output.summary["analyses"]["mdl"]["metrics"]
    assert metrics["bits_per_token"] > 0
    assert "ce_at_precision" in metrics
    folder = output.run_dir / "mdl"
    assert (folder / "precisions.csv").is_file() and (
        folder / "precision_sweep.png"
    ).is_file()
    assert math.isfinite(metrics["naive_bound_bits"])


def test_compare_saes_marks_the_smallest_code_within_the_bound():
    x = torch.randn(2000, 16)
    saes = {"narrow": make_sae(d_sae=16, seed=1), "wide": make_sae(d_sae=96, seed=2)}
    table, _ = compare_saes(saes, x.split(500))
    assert table["mdl_optimal"].sum() == 1
    best = table.loc[table["mdl_optimal"], "bits_per_token"].item()
    assert best == table["bits_per_token"].min()
    tight = table["mse_at_precision"].min()
    bounded, _ = compare_saes(saes, x.split(500), loss_bound=tight)
    winner = bounded.loc[bounded["mdl_optimal"], "sae"].item()
    assert bounded.set_index("sae").loc[winner, "mse_at_precision"] <= tight
