"""LLC estimator: known answers (regular d/2, singular < d/2, saddle), bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens_ext_llc import estimate_llc
from torch import nn


def mse(model, batch):
    """Mean squared error of ``model`` on an ``(inputs, targets)`` batch."""
    inputs, targets = batch
    return (model(inputs) - targets).pow(2).mean()


def regression_data(n=1000, d=10, out=1, seed=0):
    """Gaussian inputs, a random linear map plus noise."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, generator=generator)
    weights = torch.randn(d, out, generator=generator)
    targets = inputs @ weights + 0.5 * torch.randn(n, out, generator=generator)
    return inputs, targets


def fitted_linear(inputs, targets):
    """A bias-free linear layer at the least-squares minimum (a regular w*)."""
    model = nn.Linear(inputs.shape[1], targets.shape[1], bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets).solution.T)
    return model


def test_regular_model_has_llc_d_over_2():
    inputs, targets = regression_data()
    model = fitted_linear(inputs, targets)
    result = estimate_llc(
        model,
        mse,
        (inputs, targets),
        num_chains=4,
        num_draws=400,
        num_burnin=100,
        step_size=5e-4,
        localization=1.0,
        progress=False,
    )
    assert result.n_params == 10
    assert result.llc == pytest.approx(5.0, rel=0.10)
    assert result.diagnostics.ok, result.diagnostics.messages()
    assert result.llc_per_chain.shape == (4,)
    assert result.llc_se == pytest.approx(
        result.llc_per_chain.std(ddof=1) / math.sqrt(4)
    )
    assert result.settings["nbeta"] == pytest.approx(1000 / math.log(1000))
    draws = result.trace[~result.trace["burn_in"]]
    assert len(draws) == 4 * 400
    per_chain = draws.groupby("chain")["llc"].mean().to_numpy()
    np.testing.assert_allclose(per_chain, result.llc_per_chain)
