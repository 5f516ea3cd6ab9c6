"""MDL precision search: scale-free ladder, the choice rule, uncertainty, per-latent.

The closed form: latent ``i`` fires on a known fraction ``q_i`` of tokens and
its non-zero values sweep a grid of ``2**GRID_BITS`` equally spaced bin
midpoints over ``[0, R_i)`` evenly, so at a power-of-two precision ``p`` its
entropy is exactly ``h(q_i) + q_i * clip(log2(R_i / p), 0, GRID_BITS)`` bits.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_sae
from sae_lens_ext_mdl import (
    MDLAccumulator,
    MDLConfig,
    allocate_precisions,
    binary_entropy,
    bootstrap_choices,
    choice_on_ladder,
    describe_saes,
)

GRID_BITS = 8
N_TOKENS = 4096


def grid_codes(scale: float, n: int = N_TOKENS):
    """Independent latents with closed-form entropies; returns (acts, q, ranges)."""
    q = torch.tensor([1 / 4, 1 / 8, 1 / 2, 1 / 16, 1 / 4, 1 / 8])
    ranges = scale * torch.tensor([1.0, 2.0, 0.5, 4.0, 0.25, 1.0])
    acts = torch.zeros(n, len(q), dtype=torch.float64)
    for i in range(len(q)):
        period = int(round(1 / q[i].item()))
        on = torch.arange(i % period, n, period)  # exactly q_i n tokens
        grid = (torch.arange(len(on)) % 2**GRID_BITS + 0.5) / 2**GRID_BITS
        order = torch.randperm(len(on), generator=torch.Generator().manual_seed(i))
        acts[on, i] = grid[order].double() * ranges[i].double()
    return acts.float(), q, ranges


def closed_form_bits(q, ranges, precision: float) -> float:
    """Sum over latents of h(q_i) + q_i * clip(log2(R_i / p), 0, GRID_BITS)."""
    total = 0.0
    for q_i, r_i in zip(q.tolist(), ranges.tolist(), strict=True):
        octaves = min(max(math.log2(r_i / precision), 0.0), GRID_BITS)
        total += binary_entropy(q_i) + q_i * octaves
    return total


def linear_sae(d_sae: int, scale_dec: float = 1.0):
    """A ReLU SAE with b_dec = 0 and a decoder scaled by ``scale_dec``."""
    sae = make_sae(d_sae=d_sae, seed=3)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_dec.mul_(scale_dec)
    return sae


def measure(sae, acts, x, **options):
    accumulator = MDLAccumulator(sae, MDLConfig(**options))
    for a, xb in zip(acts.split(1024), x.split(1024), strict=True):
        accumulator.update(xb, a)
    return accumulator.result()


def inputs(sae, acts, seed=0, noise=0.05):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = sae.decode(acts)
    scale = clean.pow(2).mean().sqrt()
    return clean + noise * scale * torch.randn(clean.shape, generator=generator)


class no_ladder_warning:
    """Fail if the result warns that the choice sits at an end of the ladder."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        ends = [w for w in self.caught if "ladder" in str(w.message)]
        assert not ends, ends[0].message
        return False


@pytest.mark.parametrize("scale", [1.0, 128.0, 1024.0])
def test_bits_at_every_rung_equal_the_closed_form(scale):
    acts, q, ranges = grid_codes(scale)
    sae = linear_sae(len(q))
    with no_ladder_warning():
        result = measure(sae, acts, inputs(sae, acts))
    for row in result.precisions.itertuples():
        expected = closed_form_bits(q, ranges, row.precision)
        assert row.bits_per_token == pytest.approx(expected, abs=1e-9)
    assert result.ladder_placement == "scale"


def test_search_is_scale_free_at_activation_scale_128():
    acts, _, _ = grid_codes(1.0)
    sae = linear_sae(acts.shape[1])
    x = inputs(sae, acts)
    small = measure(sae, acts, x)
    large = measure(sae, acts * 128, x * 128)
    assert large.precision == pytest.approx(128 * small.precision)
    assert large.bits_per_token == pytest.approx(small.bits_per_token, abs=1e-9)
    assert large.loss_increase == pytest.approx(small.loss_increase, rel=1e-6)
    assert large.tolerance_met and not large.warnings
    table = large.precisions
    chosen = table.index[table["chosen"]][0]
    assert 0 < chosen < len(table) - 1  # not at an end of the ladder


def test_an_absolute_ladder_at_scale_1024_warns_and_overstates():
    """The issue's failure: a ladder in absolute units ends before the crossing."""
    acts, _, _ = grid_codes(1024.0)
    sae = linear_sae(acts.shape[1])
    x = inputs(sae, acts)
    with pytest.warns(UserWarning, match="coarsest precision of the ladder"):
        absolute = measure(sae, acts, x, finest_precision=2**-7, n_precisions=10)
    assert absolute.precision == 4.0 and absolute.warnings
    scale_free = measure(sae, acts, x)
    assert scale_free.precision > 4.0
    assert scale_free.bits_per_token < absolute.bits_per_token - 1.0


def test_choice_is_the_coarsest_with_every_finer_rung_passing():
    assert choice_on_ladder([True, True, False, True]) == (1, True)
    assert choice_on_ladder([True, True, True]) == (2, True)
    assert choice_on_ladder([False, True, True]) == (0, False)


def test_a_pass_after_a_failure_is_not_chosen():
    """Every activation is 1.0: at precision 2 the bin midpoint is exactly 1.0,
    so that rung passes although precisions 0.5 and 1 fail."""
    acts, _, _ = grid_codes(1.0)
    acts = (acts > 0).float()
    sae = linear_sae(acts.shape[1])
    x = inputs(sae, acts, noise=0.1)
    result = measure(sae, acts, x, finest_precision=2**-8, n_precisions=11)
    table = result.precisions.set_index("precision")
    assert table.loc[2.0, "passes"] and not table.loc[1.0, "passes"]
    assert table.loc[2.0, "relative_mse_increase"] == pytest.approx(0, abs=1e-9)
    assert result.precision < 1.0
    assert table.loc[: result.precision, "passes"].all()


def test_ladder_end_warnings():
    acts, _, _ = grid_codes(1.0)
    sae = linear_sae(acts.shape[1])
    x = inputs(sae, acts)
    with pytest.warns(UserWarning, match="coarsest precision"):
        loose = measure(sae, acts, x, finest_precision=2**-8, n_precisions=2)
    assert loose.metrics()["at_ladder_end"]
    with pytest.warns(UserWarning, match="no precision"):
        strict = measure(sae, acts, x, finest_precision=1.0, n_precisions=3)
    assert not strict.tolerance_met


def test_bootstrap_spread_grows_with_batch_noise():
    rungs = torch.linspace(0.0, 0.2, 9) + 0.0125  # rung 3 is the last under 0.1
    generator = torch.Generator().manual_seed(0)
    quiet = rungs + 0.001 * torch.randn(40, 9, generator=generator)
    noisy = rungs + 0.3 * torch.randn(4, 9, generator=generator)
    ones = torch.ones(40)
    quiet_choices, _ = bootstrap_choices(quiet, ones, 0.1)
    noisy_choices, resampled = bootstrap_choices(noisy, ones[:4], 0.1)
    assert (quiet_choices == 3).all()
    assert (noisy_choices != noisy_choices[0]).any()
    assert resampled[:, 3].std() > 0.05


def test_ce_search_reports_its_uncertainty(tiny_model, tiny_tokens):
    sae = make_sae()
    accumulator = MDLAccumulator(
        sae,
        MDLConfig(loss="ce", tolerance=0.01, ce_batches=3, ce_max_batches=6),
        model=tiny_model,
        hook_name="blocks.0.hook_resid_post",
    )
    for tokens in tiny_tokens.split(8):
        _, cache = tiny_model.run_with_cache(
            tokens, names_filter="blocks.0.hook_resid_post"
        )
        x = cache["blocks.0.hook_resid_post"].reshape(-1, 16)
        with torch.no_grad():
            feats = sae.encode(x)
        accumulator.update(x, feats, tokens)
    result = accumulator.result()
    assert 3 <= result.loss_batches <= 6
    assert result.precision_low <= result.precision <= result.precision_high
    assert 0 < result.precision_stability <= 1
    assert result.loss_increase_se >= 0
    if result.loss_batches < 6:
        assert result.precision_stability >= 0.9 or result.loss_batches == 3


def test_describe_saes_gives_every_sae_a_curve():
    acts, _, _ = grid_codes(64.0)
    narrow = linear_sae(acts.shape[1])
    x = inputs(narrow, acts)
    results = describe_saes({"a": narrow, "b": narrow}, x.split(1024))
    for result in results.values():
        assert len(result.precisions) == 10
        assert result.precisions["chosen"].sum() == 1


def test_allocation_fits_the_budget_and_saves_bits():
    generator = torch.Generator().manual_seed(0)
    rungs, d_sae = 6, 20
    bits = torch.linspace(8, 1, rungs)[:, None] * torch.rand(d_sae, generator=generator)
    loss = torch.linspace(0, 1, rungs)[:, None] ** 2 * torch.rand(
        d_sae, generator=generator
    )
    budget = float(loss[3].sum())
    allocation = allocate_precisions(bits, loss, budget)
    assert allocation.predicted_loss_increase <= budget + 1e-12
    assert allocation.bits <= float(bits[3].sum()) + 1e-12


def test_per_latent_precisions_follow_the_decoder_norm_and_predict_the_mse():
    """Latents with 8x larger decoder rows get ~3 octaves finer precision, and
    the predicted MSE increase matches a brute-force decode with SAE-Lens."""
    acts, q, _ = grid_codes(100.0)
    acts = torch.cat([acts, acts.roll(7, 0)], dim=1)  # two copies of each latent
    sae = make_sae(d_sae=acts.shape[1], seed=4)
    with torch.no_grad():
        sae.W_dec[len(q) :] *= 8.0  # non-unit decoder: the second copy weighs 8x
        sae.W_dec[: len(q)] *= 0.5
    x = inputs(sae, acts, noise=0.2)
    result = measure(sae, acts, x, per_latent=True, tolerance=0.05)
    latents = result.latents
    ratio = (
        latents["allocated_precision"][: len(q)].to_numpy()
        / latents["allocated_precision"][len(q) :].to_numpy()
    )
    assert (ratio >= 4).all() and (ratio <= 32).all()
    assert result.per_latent_bits <= result.bits_per_token + 1e-9
    # brute force: quantise each latent at its allocated precision, decode
    precision = torch.tensor(latents["allocated_precision"].to_numpy())
    with torch.no_grad():
        exact = sae.decode(acts).double()
        bins = torch.floor(acts.double() / precision)
        quantised = torch.where(acts > 0, (bins + 0.5) * precision, 0.0)
        moved = sae.decode(quantised.float()).double()
    clean = (x.double() - exact).pow(2).sum()
    measured = float(((x.double() - moved).pow(2).sum() - clean) / clean)
    predicted = result.per_latent_predicted_increase
    assert measured == pytest.approx(predicted, rel=0.1)
    assert measured <= 0.05 * 1.1
    assert result.uniform_predicted_increase == pytest.approx(
        result.loss_increase, rel=0.1
    )


def test_per_latent_needs_the_mse_and_a_code_only_decode():
    with pytest.raises(ValueError, match="per_latent"):
        MDLAccumulator(make_sae(), MDLConfig(per_latent=True, loss="ce"))
    sae = make_sae()
    sae.cfg.normalize_activations = "layer_norm"
    with pytest.raises(ValueError, match="mdl.per_latent to False"):
        MDLAccumulator(sae, MDLConfig(per_latent=True))
