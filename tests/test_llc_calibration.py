"""LLC you can trust without knowing the hyperparameters.

Known answers reached through ``calibrate_llc`` -> ``estimate_llc`` at its
recommendation (regular models: d/2; a normal-crossing singularity: the
tempered-posterior integral), the MALA acceptance against a float64
reference, Lanczos against a known spectrum, and saddles flagged with cause.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens_ext_llc import calibrate_llc, estimate_llc
from sae_lens_ext_llc.convergence import is_stationary
from sae_lens_ext_llc.curvature import lowest_hessian_eigenvalue
from sae_lens_ext_llc.sampler import LossModule
from sae_lens_ext_llc.threads import choose_threads
from torch import nn


def mse(model, batch):
    """Mean squared error of ``model`` on an ``(inputs, targets)`` batch."""
    inputs, targets = batch
    return (model(inputs) - targets).pow(2).mean()


def fitted_regression(d, n=1000, seed=0):
    """A bias-free linear model at its least-squares minimum, and its data."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, generator=generator)
    targets = inputs @ torch.randn(d, 1, generator=generator)
    targets += 0.5 * torch.randn(n, 1, generator=generator)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets).solution.T)
    return model, (inputs, targets)


def calibrated_estimate(model, loss_fn, data, calibration_options=(), **options):
    """``calibrate_llc`` then ``estimate_llc`` at its recommendation."""
    calibration = calibrate_llc(
        model, loss_fn, data, progress=False, **dict(calibration_options)
    )
    assert calibration.recommended is not None, calibration.reason
    result = estimate_llc(
        model,
        loss_fn,
        data,
        progress=False,
        **{**calibration.estimate_options(), **options},
    )
    return calibration, result


@pytest.mark.parametrize("d", [2, 10, 30])
def test_calibrated_linear_regression_gives_d_over_2(d):
    model, data = fitted_regression(d, seed=d)
    calibration, result = calibrated_estimate(model, mse, data)
    assert result.llc == pytest.approx(d / 2, rel=0.10)
    chosen = calibration.recommended
    assert chosen["stationary"] and chosen["acceptance"] >= 0.9
    assert not result.diagnostics.has("saddle")


class PairRegression(nn.Module):
    """A linear regression plus one multiplicative pair a * b on an extra input."""

    def __init__(self, d):
        super().__init__()
        self.linear = nn.Linear(d, 1, bias=False)
        self.a = nn.Parameter(torch.zeros(1))
        self.b = nn.Parameter(torch.zeros(1))

    def forward(self, inputs):
        return self.linear(inputs[:, :-1]) + self.a * self.b * inputs[:, -1:]


def pair_regression(at_minimum, d=10, n=1000, coefficient=0.1):
    """The issue's saddle: the extra input's true coefficient is small, and
    a = b = 0 (gradient zero, Hessian in (a, b) indefinite) unless
    ``at_minimum`` puts a * b at the least-squares coefficient."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, d + 1, generator=generator)
    targets = inputs[:, :-1] @ torch.randn(d, 1, generator=generator)
    targets += coefficient * inputs[:, -1:] + 0.5 * torch.randn(
        n, 1, generator=generator
    )
    model = PairRegression(d)
    with torch.no_grad():
        if at_minimum:
            solution = torch.linalg.lstsq(inputs, targets).solution[:, 0]
            model.linear.weight.copy_(solution[:-1])
            root = math.sqrt(abs(float(solution[-1])))
            model.a.fill_(root)
            model.b.fill_(math.copysign(root, float(solution[-1])))
        else:
            fit = torch.linalg.lstsq(inputs[:, :-1], targets).solution
            model.linear.weight.copy_(fit.T)
    return model, (inputs, targets)


def test_positive_estimate_at_a_saddle_is_flagged_with_its_direction():
    model, data = pair_regression(at_minimum=False)
    result = estimate_llc(
        model, mse, data, num_draws=300, num_burnin=100, step_size=5e-4, progress=False
    )
    assert result.llc > 0  # the sign alone would not reveal it
    assert result.diagnostics.has("saddle")
    report = result.diagnostics.curvature
    # Hessian in (a, b) at 0 is [[0, -g], [-g, 0]], g = 2 mean(residual * x_extra)
    inputs, targets = data
    residual = targets - model(inputs).detach()
    expected = -2 * float((residual * inputs[:, -1:]).mean())
    assert report.lowest == pytest.approx(expected, rel=0.02)
    assert {name for name, _ in report.direction_shares[:2]} == {"a", "b"}
    message = next(m for m in result.diagnostics.messages() if "saddle" in m)
    assert "a 50%" in message and "Continue training" in message
    assert f"{report.lowest:.3g}" in message

    fitted, _ = pair_regression(at_minimum=True)
    at_minimum = estimate_llc(
        fitted, mse, data, num_draws=100, num_burnin=50, step_size=5e-4, progress=False
    )
    assert not at_minimum.diagnostics.has("saddle")
    assert at_minimum.diagnostics.curvature.lowest > -1e-4


def test_calibration_at_a_saddle_recommends_nothing_and_names_the_cause():
    model, data = pair_regression(at_minimum=False)
    calibration = calibrate_llc(
        model, mse, data, step_sizes=(2e-4, 5e-4), progress=False
    )
    assert calibration.recommended is None
    assert "saddle" in calibration.reason and "no step size" in calibration.reason
    assert calibration.table["round"].max() == 0  # no widening for an incurable cause
    with pytest.raises(ValueError, match="saddle"):
        calibration.estimate_options()


def test_lanczos_finds_the_extreme_eigenvalues_of_a_known_hessian():
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(50, 50, generator=generator))
    spectrum = torch.linspace(-0.5, 4.0, 50)
    hessian = basis @ torch.diag(spectrum) @ basis.T

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(50))

    def quadratic(model, batch):
        return 0.5 * model.w @ hessian @ model.w + 0 * batch.sum()

    module = LossModule(Quadratic(), quadratic)
    anchor = {"model.w": torch.zeros(50)}
    full = lowest_hessian_eigenvalue(module, anchor, torch.zeros(4, 1), 4, 4)
    assert full.lowest == pytest.approx(-0.5, abs=1e-4)
    assert full.highest == pytest.approx(4.0, abs=1e-4)
    sub = lowest_hessian_eigenvalue(
        module, anchor, torch.zeros(4, 1), 4, 4, max_params=20
    )
    assert sub.dimension == 20
    assert sub.lowest >= full.lowest - 1e-4  # interlacing: never below H's


def test_lanczos_counts_unused_and_linear_weights_as_zero_curvature():
    # The sampler takes models with a weight the loss never reads or reads only
    # linearly; their Hessian rows are zero, so the spectrum gains zeros.
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))
            self.linear = nn.Parameter(torch.zeros(2))
            self.unused = nn.Parameter(torch.zeros(2))

    curvatures = torch.tensor([1.0, 2.0, 3.0])

    def loss(model, batch):
        return (
            0.5 * (curvatures * model.w**2).sum() + model.linear.sum() + 0 * batch.sum()
        )

    module = LossModule(Mixed(), loss)
    anchor = {f"model.{n}": torch.zeros(p.shape) for n, p in Mixed().named_parameters()}
    report = lowest_hessian_eigenvalue(module, anchor, torch.zeros(4, 1), 4, 4)
    assert report.lowest == pytest.approx(0.0, abs=1e-5)
    assert report.highest == pytest.approx(3.0, abs=1e-5)
    only_flat = {"model.linear": torch.zeros(2), "model.unused": torch.zeros(2)}
    flat = lowest_hessian_eigenvalue(module, only_flat, torch.zeros(4, 1), 4, 4)
    assert flat.lowest == flat.highest == 0.0


def test_mala_acceptance_matches_a_float64_reference():
    model, data = fitted_regression(3, n=64)
    eps, nbeta, gamma = 2e-3, 20.0, 5.0
    result = estimate_llc(
        model,
        mse,
        data,
        num_chains=2,
        num_draws=12,
        num_burnin=0,
        step_size=eps,
        nbeta=nbeta,
        localization=gamma,
        seed=3,
        check_curvature=False,
        progress=False,
    )
    inputs, targets = (t.double() for t in data)
    anchor = model.weight.detach().double().reshape(-1)
    noise = torch.Generator().manual_seed(3)

    def potential_and_grad(w):
        w = w.clone().requires_grad_(True)
        value = nbeta * (inputs @ w[:, None] - targets).pow(2).mean()
        value = value + 0.5 * gamma * (w - anchor).pow(2).sum()
        (gradient,) = torch.autograd.grad(value, w)
        return value.item(), gradient

    weights = [anchor.clone(), anchor.clone()]
    expected = np.full((2, 12), np.nan)
    for step in range(12):
        block = torch.randn((2, 3), generator=noise).double()
        for chain in range(2):
            w = weights[chain]
            u, g = potential_and_grad(w)
            proposal = w - eps / 2 * g + math.sqrt(eps) * block[chain]
            u_new, g_new = potential_and_grad(proposal)
            reverse = (w - proposal + eps / 2 * g_new).pow(2).sum() / (2 * eps)
            log_accept = (
                u - u_new - float(reverse) + float(block[chain].pow(2).sum()) / 2
            )
            if step < 11:
                expected[chain, step] = math.exp(min(log_accept, 0.0))
            weights[chain] = proposal
    got = result.trace.pivot(index="chain", columns="step", values="acceptance")
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-3, equal_nan=True)
    assert 0.5 < np.nanmean(expected) <= 1.0


def test_stationarity_test_separates_a_trend_from_noise():
    generator = np.random.default_rng(0)
    noise = generator.normal(size=(4, 400))
    settled = 5.0 + noise
    rising = 5.0 * (1 - np.exp(-np.arange(400) / 300)) + noise
    assert is_stationary(settled)[0]
    still, drift = is_stationary(rising)
    assert not still and drift > 0.3


def test_calibration_widens_the_grid_when_nothing_qualifies():
    model, data = fitted_regression(5, n=500, seed=1)
    calibration, result = calibrated_estimate(
        model, mse, data, calibration_options={"step_sizes": (2e-5,)}
    )
    table = calibration.table
    assert table["round"].max() >= 1  # widened by itself
    assert not table.loc[table["round"] == 0, "healthy"].any()
    assert calibration.recommended["step_size"] > 2e-5
    assert calibration.spent <= calibration.budget
    assert result.llc == pytest.approx(2.5, rel=0.10)


def test_calibration_stops_at_its_budget_and_says_so():
    model, data = fitted_regression(5, n=500, seed=1)
    calibration = calibrate_llc(
        model, mse, data, step_sizes=(2e-5,), budget=4 * 250 + 1, progress=False
    )
    assert calibration.recommended is None
    assert "budget of 1,001 chain-steps" in calibration.reason
    assert "not_stationary" in calibration.reason
    with pytest.raises(ValueError, match="budget"):
        calibrate_llc(model, mse, data, budget=10, progress=False)


@pytest.mark.slow
def test_calibrated_mlp_at_a_strict_minimum_gives_d_over_2():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(2000, 2, generator=generator)
    net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.copy_(torch.tensor([0.5, -0.5]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
        net[2].bias.fill_(0.2)
        targets = net(inputs) + 0.3 * torch.randn(2000, 1, generator=generator)
    optimiser = torch.optim.LBFGS(
        net.parameters(),
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimiser.zero_grad()
        loss = mse(net, (inputs, targets))
        loss.backward()
        return loss

    for _ in range(3):
        optimiser.step(closure)
    calibration, result = calibrated_estimate(
        net,
        mse,
        (inputs, targets),
        calibration_options={"num_burnin": 200, "num_draws": 800},
    )
    report = result.diagnostics.curvature
    assert report.lowest > 0.01  # a strict minimum: every direction curves up
    assert result.n_params == 9
    assert result.llc == pytest.approx(4.5, rel=0.10)


def crossing_expectation(nbeta: float, gamma: float) -> float:
    """E[nbeta K] for K(w) = w1^2 w2^2 under p(w) ~ exp(-nbeta K - gamma |w|^2 / 2).

    Given w2 = t, w1 is Gaussian with precision 2 a(t), a(t) = nbeta t^2 +
    gamma / 2, so E[nbeta K | t] = nbeta t^2 / (2 a(t)) and t has density
    proportional to sqrt(pi / a(t)) exp(-gamma t^2 / 2): one 1-D integral.
    """
    t = np.linspace(-12 / math.sqrt(gamma), 12 / math.sqrt(gamma), 400_001)
    a = nbeta * t**2 + gamma / 2
    weight = np.sqrt(np.pi / a) * np.exp(-gamma * t**2 / 2)
    return float((nbeta * t**2 / (2 * a) * weight).sum() / weight.sum())


class NormalCrossing(nn.Module):
    """Two weights at w* = 0 with loss K(w) = w1^2 w2^2 (no data needed)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))


def crossing_loss(model, batch):
    """K(w) = w1^2 w2^2; the batch is a placeholder."""
    return (model.w[0] * model.w[1]) ** 2 + 0 * batch.sum()


def test_crossing_integral_tends_to_the_learning_coefficient_slowly():
    # Watanabe: lambda = 1/2 with multiplicity 2 for w1^2 w2^2; the finite-nbeta
    # value approaches it only like 1/2 - O(1 / log(nbeta / gamma))
    values = [crossing_expectation(nbeta, 1.0) for nbeta in (1e2, 1e4, 1e6)]
    assert values == sorted(values) and values[-1] < 0.5
    assert values[0] == pytest.approx(0.3542, abs=1e-3)
    # w -> w / sqrt(gamma) maps (nbeta, gamma) to (nbeta / gamma^2, 1)
    assert crossing_expectation(1e3, 10.0) == pytest.approx(
        crossing_expectation(10.0, 1.0), abs=1e-6
    )


@pytest.mark.slow
def test_calibrated_normal_crossing_matches_its_finite_nbeta_value():
    nbeta, gamma = 1000.0, 10.0
    exact = crossing_expectation(nbeta, gamma)  # 0.290, against lambda = 0.5
    placeholder = torch.zeros(8, 1)
    calibration, result = calibrated_estimate(
        NormalCrossing(),
        crossing_loss,
        placeholder,
        calibration_options={
            "nbetas": (nbeta,),
            "localization": gamma,
            "step_sizes": (1e-4, 1e-3, 1e-2),
            "num_chains": 8,
            "num_burnin": 400,
            "num_draws": 1600,
        },
        num_chains=8,
    )
    assert result.diagnostics.curvature.lowest == pytest.approx(0.0, abs=1e-9)
    assert abs(result.llc - exact) < max(3 * result.llc_se, 0.05)
    assert result.llc < 0.5 - 0.1  # clearly the finite-nbeta value, not lambda


def test_thread_count_follows_problem_size_and_load(monkeypatch):
    cpu = torch.device("cpu")
    assert choose_threads(3, 10, 10, cpu) == 3
    assert choose_threads(None, 1000, 256, cpu) == 1
    monkeypatch.setattr("sae_lens_ext_llc.threads.machine_is_busy", lambda: True)
    assert choose_threads(None, 10**8, 10**4, cpu) == 1
    monkeypatch.setattr("sae_lens_ext_llc.threads.machine_is_busy", lambda: False)
    assert choose_threads(None, 10**8, 10**4, cpu) == torch.get_num_threads()
    with pytest.raises(ValueError, match="threads"):
        choose_threads(0, 10, 10, cpu)
