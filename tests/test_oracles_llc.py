"""LLC with minibatches (m < n) against a known answer.

For a linear model at its least-squares minimum, the loss is exactly
quadratic: ``L(w) - L(w*) = (w - w*)^T S (w - w*)`` with ``S = X^T X / n``.
The localised tempered posterior ``exp(-nbeta L(w) - gamma/2 |w - w*|^2)`` is
then Gaussian with precision ``2 nbeta S + gamma I``, so the LLC estimator's
expectation is ``nbeta * tr(S (2 nbeta S + gamma I)^-1)`` (d/2 as gamma -> 0).
A minibatch loss is an unbiased estimate of the full loss at weights drawn
before the batch, so the estimate keeps this value; the default nbeta is
``m / log m`` for minibatch size m, and ``L(w*)`` is the loss on all n rows.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sae_lens_ext_llc import estimate_llc
from sae_lens_ext_llc.estimator import default_nbeta
from test_llc import fitted_linear, mse, regression_data

N, M, D = 1000, 100, 10


def expected_llc(inputs: torch.Tensor, nbeta: float, localization: float) -> float:
    """``nbeta * tr(S (2 nbeta S + gamma I)^-1)`` from the eigenvalues of S."""
    s = torch.linalg.eigvalsh(inputs.double().T @ inputs.double() / len(inputs))
    return float(nbeta * (s / (2 * nbeta * s + localization)).sum())


@pytest.fixture(scope="module")
def minibatch_run():
    inputs, targets = regression_data(n=N, d=D)
    model = fitted_linear(inputs, targets)
    result = estimate_llc(
        model,
        mse,
        (inputs, targets),
        batch_size=M,
        num_chains=32,
        num_draws=1500,
        num_burnin=400,
        step_size=1e-3,
        localization=1.0,
        check_curvature=False,
        progress=False,
    )
    return inputs, targets, model, result


def test_default_nbeta_uses_the_minibatch_size(minibatch_run):
    *_, result = minibatch_run
    assert result.settings["batch_size"] == M and result.settings["n_samples"] == N
    assert result.settings["nbeta"] == pytest.approx(M / math.log(M), rel=1e-12)


def test_init_loss_is_the_full_data_loss(minibatch_run):
    inputs, targets, model, result = minibatch_run
    with torch.no_grad():
        full = mse(model, (inputs, targets)).item()
        first_batch = mse(model, (inputs[:M], targets[:M])).item()
    # float32 means of 1000 terms: relative rounding ~1e-7.
    assert result.init_loss == pytest.approx(full, rel=1e-5)
    # The check can tell the two apart: one minibatch's loss differs by far more.
    assert abs(first_batch - full) > 100 * 1e-5 * full


def test_trace_is_nbeta_m_times_loss_above_the_full_data_loss(minibatch_run):
    inputs, targets, model, result = minibatch_run
    with torch.no_grad():
        full = mse(model, (inputs, targets)).item()
    nbeta = M / math.log(M)
    draws = result.trace[~result.trace["burn_in"]]
    per_chain = (nbeta * (draws["loss"] - full)).groupby(draws["chain"]).mean()
    np.testing.assert_allclose(per_chain.to_numpy(), result.llc_per_chain, rtol=1e-4)


def test_minibatch_llc_matches_the_gaussian_posterior_value(minibatch_run):
    inputs, *_, result = minibatch_run
    expected = expected_llc(inputs, M / math.log(M), localization=1.0)
    assert expected == pytest.approx(4.89, abs=0.01)  # d/2 = 5 shrunk by gamma
    # Noise, measured over seeds 0-7 of this setting: SE over the 32 chains
    # 0.06-0.07, estimates 4.85-5.09 (mean 4.93, a +1% bias from the step
    # size and minibatch gradient noise).  Allow 4 SE plus 2% for the bias.
    tolerance = 4 * result.llc_se + 0.02 * expected
    assert result.llc == pytest.approx(expected, abs=tolerance)
    assert result.llc_se < 0.1


@pytest.fixture(scope="module")
def small_run():
    """A cheap estimate with every sampler option at its default."""
    inputs, targets = regression_data(n=200, d=3, seed=1)
    model = fitted_linear(inputs, targets)
    return estimate_llc(
        model, mse, (inputs, targets), check_curvature=False, progress=False
    )


def test_defaults_are_the_documented_ones(small_run):
    # The docstring: 4 chains of 50 burn-in + 200 draws, step 1e-4,
    # localization 1, nbeta = n / log n for full batches.
    settings = small_run.settings
    assert (settings["num_chains"], settings["num_burnin"], settings["num_draws"]) == (
        4,
        50,
        200,
    )
    assert settings["step_size"] == 1e-4 and settings["localization"] == 1.0
    assert settings["nbeta"] == pytest.approx(200 / math.log(200), rel=1e-12)
    assert len(small_run.trace) == 4 * 250
    assert small_run.trace["burn_in"].sum() == 4 * 50


def test_per_chain_table_and_spread_equal_loops_over_the_trace(small_run):
    rows = small_run.trace.to_dict("records")
    table = small_run.per_chain_table()
    assert list(table["chain"]) == [0, 1, 2, 3]
    for chain in range(4):
        draws = [r for r in rows if r["chain"] == chain and not r["burn_in"]]
        assert len(draws) == 200
        mean_loss = sum(r["loss"] for r in draws) / len(draws)
        mean_distance = sum(r["distance"] for r in draws) / len(draws)
        mean_llc = sum(r["llc"] for r in draws) / len(draws)
        assert table["mean_loss"][chain] == pytest.approx(mean_loss, rel=1e-9)
        assert table["mean_distance"][chain] == pytest.approx(mean_distance, rel=1e-9)
        assert table["llc"][chain] == pytest.approx(mean_llc, rel=1e-9)
    assert list(table["diverged"]) == [False] * 4
    per_chain = [float(v) for v in table["llc"]]
    mean = sum(per_chain) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in per_chain) / 3)
    assert small_run.llc == pytest.approx(mean, rel=1e-9)
    assert small_run.llc_std == pytest.approx(sd, rel=1e-9)
    assert small_run.llc_se == pytest.approx(sd / 2, rel=1e-9)
    summary = small_run.summary()
    assert summary["llc_std"] == small_run.llc_std


def test_seconds_is_the_elapsed_clock_time(monkeypatch):
    # A clock that reads 1000 s at the start and 1003.5 s ever after.
    readings = iter([1000.0])
    monkeypatch.setattr(
        "sae_lens_ext_llc.estimator.time.perf_counter", lambda: next(readings, 1003.5)
    )
    inputs, targets = regression_data(n=50, d=2, seed=2)
    result = estimate_llc(
        fitted_linear(inputs, targets),
        mse,
        (inputs, targets),
        num_chains=2,
        num_draws=5,
        num_burnin=1,
        check_curvature=False,
        progress=False,
    )
    assert result.seconds == 3.5


@pytest.mark.parametrize(
    ("m", "nbeta"),
    [(1, 1.0), (2, 2 / math.log(2)), (3, 3 / math.log(3)), (100, 100 / math.log(100))],
)
def test_default_nbeta_is_m_over_log_m_and_one_for_a_single_row(m, nbeta):
    # log 1 = 0: a single-row batch falls back to nbeta = 1.
    assert default_nbeta(m) == pytest.approx(nbeta, rel=1e-12)


def test_batch_size_below_one_is_refused_and_one_is_allowed():
    from sae_lens_ext_llc.estimator import prepare_problem

    inputs, targets = regression_data(n=20, d=3, seed=2)
    model = fitted_linear(inputs, targets)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        prepare_problem(model, mse, (inputs, targets), 0, None)
    assert prepare_problem(model, mse, (inputs, targets), 1, None).batch_size == 1


@pytest.mark.parametrize(
    ("dtype", "recorded"), [(torch.bfloat16, "bfloat16"), (None, "none")]
)
def test_settings_record_names_the_autocast_dtype(dtype, recorded):
    from sae_lens_ext_llc.estimator import prepare_problem, settings_record

    inputs, targets = regression_data(n=20, d=3, seed=2)
    model = fitted_linear(inputs, targets)
    problem = prepare_problem(model, mse, (inputs, targets), 10, dtype)
    record = settings_record(problem, seed=3)
    assert record == {
        "seed": 3,
        "batch_size": 10,
        "n_samples": 20,
        "autocast": recorded,
    }


def test_problem_gradient_and_minibatch_spread_against_direct_computations():
    from sae_lens_ext_llc.estimator import prepare_problem

    inputs, targets = regression_data(n=20, d=3, seed=4)
    model = torch.nn.Linear(3, 1, bias=False)  # away from the minimum: a real gradient
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    problem = prepare_problem(model, mse, (inputs, targets), 7, None)
    full = mse(model, (inputs, targets))
    (grad,) = torch.autograd.grad(full, [model.weight])
    assert problem.init_loss == pytest.approx(full.item(), rel=1e-6)
    assert problem.init_grad_norm == pytest.approx(float(grad.norm()), rel=1e-5)
    # the spread uses the full 7-row minibatches only (rows 0-6 and 7-13)
    with torch.no_grad():
        losses = [
            float(mse(model, (inputs[s : s + 7], targets[s : s + 7]))) for s in (0, 7)
        ]
    assert problem.batch_loss_sd == pytest.approx(
        float(np.std(losses, ddof=1)), rel=1e-5
    )
    # one full-data batch: no spread to measure
    assert prepare_problem(model, mse, (inputs, targets), 20, None).batch_loss_sd == 0.0


def test_sampler_options_are_keyword_only():
    inputs, targets = regression_data(n=20, d=3, seed=2)
    with pytest.raises(TypeError, match="positional"):
        estimate_llc(fitted_linear(inputs, targets), mse, (inputs, targets), 4)


def test_printed_summary_states_half_the_parameter_count(small_run):
    # nn.Linear(3, 1) without bias: d = 3 sampled parameters, so d/2 = 1.5.
    assert small_run.n_params == 3
    first_line = str(small_run).splitlines()[0]
    assert first_line.endswith("(SE over 4 chains; d/2 = 1.5)")


def test_minibatch_spread_with_batches_of_more_than_256_rows():
    # Above 256 rows a batch's size is a fresh int, not CPython's cached one:
    # the comparison with batch_size must compare values.
    from sae_lens_ext_llc.estimator import prepare_problem

    inputs, targets = regression_data(n=700, d=2, seed=5)
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0]]))
        losses = [
            float(mse(model, (inputs[s : s + 300], targets[s : s + 300])))
            for s in (0, 300)
        ]
    problem = prepare_problem(model, mse, (inputs, targets), 300, None)
    # Rows 600-699 form a partial batch, left out of the spread.
    spread = abs(losses[0] - losses[1]) / math.sqrt(2)  # the SD (ddof 1) of two values
    assert spread > 0.01
    # float32 means of 300 terms: relative rounding ~1e-6 of each loss.
    assert problem.batch_loss_sd == pytest.approx(spread, rel=1e-3)


def chain_means_by_hand(result) -> list[float]:
    """Each chain's mean of nbeta (loss - L(w*)) over its draws, by a loop over the trace."""
    nbeta = result.settings["nbeta"]
    sums: dict[int, list[float]] = {}
    for row in result.trace.to_dict("records"):
        if not row["burn_in"]:
            sums.setdefault(row["chain"], []).append(
                nbeta * (row["loss"] - result.init_loss)
            )
    return [sum(v) / len(v) for _, v in sorted(sums.items())]


def small_estimate(num_chains: int, num_draws: int = 200):
    inputs, targets = regression_data(n=100, d=3, seed=6)
    return estimate_llc(
        fitted_linear(inputs, targets),
        mse,
        (inputs, targets),
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=20,
        step_size=1e-3,
        check_curvature=False,
        progress=False,
    )


def test_standard_error_of_two_chains_is_half_their_difference():
    # Two values a, b: SD (ddof 1) |a - b| / sqrt 2, so SE = SD / sqrt 2 = |a - b| / 2.
    result = small_estimate(num_chains=2)
    assert result.diagnostics.diverged_chains == []
    a, b = chain_means_by_hand(result)
    assert result.llc == pytest.approx((a + b) / 2, rel=1e-6)
    assert result.llc_se == pytest.approx(abs(a - b) / 2, rel=1e-6)


def geyer_ess(draws: list[float]) -> float:
    """Effective sample size by Geyer's initial monotone sequence, with direct sums.

    rho_k = sum_t (x_t - mean)(x_{t+k} - mean) / sum_t (x_t - mean)^2; pairs
    rho_{2j} + rho_{2j+1} are summed while positive, each capped at the one
    before; tau = max(1, -1 + 2 * sum); ESS = n / tau.
    """
    n = len(draws)
    mean = sum(draws) / n
    centred = [x - mean for x in draws]
    denominator = sum(c * c for c in centred)
    rho = [
        sum(centred[t] * centred[t + k] for t in range(n - k)) / denominator
        for k in range(n)
    ]
    total, cap = 0.0, math.inf
    for j in range(n // 2):
        pair = rho[2 * j] + rho[2 * j + 1]
        if pair <= 0:
            break
        cap = min(cap, pair)
        total += cap
    return n / max(1.0, -1.0 + 2.0 * total)


def test_single_chain_standard_error_uses_its_effective_sample_size():
    # One chain: no spread over chains, so SE = SD of its draws / sqrt(ESS).
    result = small_estimate(num_chains=1)
    assert result.diagnostics.diverged_chains == []
    nbeta = result.settings["nbeta"]
    draws = [
        nbeta * (row["loss"] - result.init_loss)
        for row in result.trace.to_dict("records")
        if not row["burn_in"]
    ]
    n = len(draws)
    mean = sum(draws) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in draws) / (n - 1))
    ess = geyer_ess(draws)
    # SGLD draws are autocorrelated: the ESS is well below the draw count,
    # so the naive SD / sqrt(n) would be told apart from the right answer.
    assert ess < n / 2
    assert result.llc == pytest.approx(mean, rel=1e-6)
    assert result.llc_se == pytest.approx(sd / math.sqrt(ess), rel=1e-6)


def summarise_synthetic(loss: list[list[float]], num_burnin: int, nbeta: float):
    """``summarise_chains`` of hand-set loss traces ``[chains, steps]`` on a small problem.

    Returns the problem's L(w*) and the result; distances are a constant 0.1.
    """
    from sae_lens_ext_llc.estimator import prepare_problem, summarise_chains
    from sae_lens_ext_llc.sampler import ChainTraces

    inputs, targets = regression_data(n=50, d=2, seed=7)
    problem = prepare_problem(
        fitted_linear(inputs, targets), mse, (inputs, targets), None, None
    )
    losses = torch.tensor(loss, dtype=torch.float64) + problem.init_loss
    traces = ChainTraces(loss=losses, distance=torch.full_like(losses, 0.1))
    settings = dict(
        num_burnin=num_burnin, nbeta=nbeta, step_size=1e-4, localization=1.0
    )
    chains = slice(0, len(loss))
    return summarise_chains(problem, traces, chains, settings=settings, seconds=0.0)


def test_single_chain_of_alternating_draws_has_the_classical_standard_error():
    # Draws alternating about their mean have lag-1 autocorrelation near -1:
    # Geyer's first pair is <= 0, so ESS = n and SE = SD (ddof 1) / sqrt(n).
    burn_in, n, nbeta = 4, 40, 2.0
    wiggle = [0.01 * (1 + (t % 3)) * (-1) ** t for t in range(n)]
    result = summarise_synthetic(
        [[0.1] * burn_in + [0.2 + w for w in wiggle]], 4, nbeta
    )
    draws = [nbeta * (0.2 + w) for w in wiggle]
    mean = sum(draws) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in draws) / (n - 1))
    assert geyer_ess(draws) == n
    assert result.llc == pytest.approx(mean, rel=1e-9)
    assert result.llc_se == pytest.approx(sd / math.sqrt(n), rel=1e-9)


def test_all_chains_exploded_give_a_quiet_nan_estimate():
    # Every chain's loss went non-finite: no estimate, both chains flagged,
    # and no NumPy warning about an empty mean or a standard error of 0 chains.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = summarise_synthetic([[math.nan] * 10] * 2, num_burnin=2, nbeta=2.0)
    assert math.isnan(result.llc) and math.isnan(result.llc_se)
    assert result.diagnostics.diverged_chains == [0, 1]
    assert np.isnan(result.llc_per_chain).all()
