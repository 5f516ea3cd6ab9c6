"""The batched L1 logistic solver against liblinear, and its KKT conditions."""

from __future__ import annotations

import pytest
import torch
from sae_lens_ext_absorption.l1_logistic import SparseDesign, l1_logistic
from sae_lens_ext_absorption.probes import l1_ranking

L1 = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_problem(seed: int, n: int = 600, d: int = 40, p: int = 4):
    """Sparse non-negative codes (about 15% non-zero, max 1) and labels that
    depend on a few columns each, plus one duplicated column."""
    generator = torch.Generator().manual_seed(seed)
    fires = torch.rand(n, d, generator=generator) < 0.15
    dense = torch.where(fires, torch.rand(n, d, generator=generator), 0.0)
    dense[:, -1] = dense[:, 0]  # a duplicate: the Hessian is singular there
    dense = dense / dense.max()
    truth = torch.randn(d, p, generator=generator) * (
        torch.rand(d, p, generator=generator) < 0.2
    )
    noise = torch.randn(n, p, generator=generator)
    labels = dense @ truth * 4 + noise > 1.0
    return dense, labels


def objective(dense, labels, weight, bias):
    """liblinear's objective (mean balanced log loss + L1 of w and b), float64."""
    dense, weight, bias = dense.double(), weight.double(), bias.double()
    n = labels.shape[0]
    n_positive = labels.sum(0)
    class_weight = torch.where(labels, n / (2 * n_positive), n / (2 * (n - n_positive)))
    margin = torch.where(labels, 1.0, -1.0) * (dense @ weight.T + bias)
    loss = (class_weight * torch.nn.functional.softplus(-margin)).mean(0)
    return loss + L1 * (weight.abs().sum(1) + bias.abs())


def fit_entries(dense, labels, **kwargs):
    rows, columns = dense.nonzero(as_tuple=True)
    design = SparseDesign.from_entries(
        rows, columns, dense[rows, columns], tuple(dense.shape)
    )
    return l1_logistic(design, labels, l1=L1, **kwargs)


def liblinear(dense, labels):
    """scikit-learn's liblinear fit, one probe per label column, tight tolerance."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    new_api = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)
    penalty = {"l1_ratio": 1.0} if new_api else {"penalty": "l1"}
    weights, biases = [], []
    for column in labels.T.numpy():
        probe = LogisticRegression(
            solver="liblinear",
            C=1.0 / (L1 * len(column)),
            class_weight="balanced",
            tol=1e-8,
            max_iter=10_000,
            **penalty,
        ).fit(dense.double().numpy(), column)
        weights.append(torch.from_numpy(probe.coef_[0]))
        biases.append(float(probe.intercept_[0]))
    return torch.stack(weights), torch.tensor(biases, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1])
def test_reaches_liblinears_objective_and_ranking(seed):
    pytest.importorskip("sklearn")
    dense, labels = sparse_problem(seed)
    fit = fit_entries(dense, labels)
    theirs_w, theirs_b = liblinear(dense, labels)
    ours = objective(dense, labels, fit.weight, fit.bias)
    theirs = objective(dense, labels, theirs_w, theirs_b)
    torch.testing.assert_close(fit.objective, ours)
    # liblinear stops at its own tolerance: ours may only be lower, barely
    assert (ours - theirs).max() < 1e-9
    assert (theirs - ours).max() < 1e-6
    rows, columns = dense.nonzero(as_tuple=True)
    codes = torch.sparse_coo_tensor(
        torch.stack([rows, columns]),
        dense[rows, columns],
        dense.shape,
        check_invariants=False,
    )
    ranked = l1_ranking(codes, labels, l1=L1, max_k=5)
    strongest = torch.sort(-theirs_w, dim=1, stable=True).indices[:, :5]
    # the duplicated pair (columns 0 and -1) shares its weight arbitrarily
    # between the two copies: compare the other columns
    clean = ~torch.isin(strongest, torch.tensor([0, dense.shape[1] - 1])).any(1)
    assert clean.sum() >= 2
    assert torch.equal(ranked[clean], strongest[clean])


def test_solution_satisfies_the_optimality_conditions():
    # known answer without scikit-learn: at the optimum the loss gradient g
    # is -l1 sign(w) on non-zero weights and within [-l1, l1] on zero ones
    dense, labels = sparse_problem(2)
    fit = fit_entries(dense, labels)
    weight = torch.cat([fit.weight, fit.bias[:, None]], 1).requires_grad_(True)
    ones = torch.ones(len(dense), 1, dtype=torch.float64)
    design = torch.cat([dense.double(), ones], 1)
    loss = objective(design, labels, weight, torch.zeros(labels.shape[1]))
    loss = loss - L1 * weight.abs().sum(1)  # the smooth part only
    (gradient,) = torch.autograd.grad(loss.sum(), weight)
    nonzero = weight.detach() != 0
    assert nonzero.sum(1).min() >= 2  # non-trivial fits
    stationary = gradient + L1 * torch.sign(weight.detach())
    assert stationary[nonzero].abs().max() < 1e-8
    assert gradient[~nonzero].abs().max() <= L1 * (1 + 1e-6)


def test_hessian_blocks_equal_the_dense_products():
    dense, _ = sparse_problem(3, n=200, d=12)
    rows, columns = dense.nonzero(as_tuple=True)
    design = SparseDesign.from_entries(
        rows, columns, dense[rows, columns], tuple(dense.shape)
    )
    generator = torch.Generator().manual_seed(0)
    h = torch.rand(200, 2, generator=generator)
    chosen = torch.tensor([[3, 12, 0, 7], [5, 5, 11, 2]])  # 12: the constant
    blocks = design.hessian_blocks(h, chosen)
    full = torch.cat([dense, torch.ones(200, 1)], 1).double()
    for probe in range(2):
        x = full[:, chosen[probe]]
        expected = x.T @ (h[:, probe, None].double() * x)
        torch.testing.assert_close(blocks[probe], expected, rtol=1e-5, atol=1e-6)
    if design.pair_table is not None:  # the search path gives the same
        design.pair_table = None
        torch.testing.assert_close(design.hessian_blocks(h, chosen), blocks)


def test_bad_problems_are_rejected():
    dense, labels = sparse_problem(4, n=100, d=8, p=2)
    labels[:, 1] = True
    with pytest.raises(ValueError, match="positive and negative"):
        fit_entries(dense, labels)
    with pytest.raises(ValueError, match="l1 must be positive"):
        rows, columns = dense.nonzero(as_tuple=True)
        design = SparseDesign.from_entries(
            rows, columns, dense[rows, columns], tuple(dense.shape)
        )
        l1_logistic(design, labels[:, :1], l1=0.0)
