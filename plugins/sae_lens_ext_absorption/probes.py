"""Logistic-regression probes: batched LBFGS, and the L1 ranking of sparse codes.

Every probe here is one-vs-rest and class-balanced: positives are weighted
by ``n_negative / n_positive`` in the binary cross-entropy, as in SAEBench.
Several independent probes are fitted at once by summing their losses (their
parameters do not interact, so the joint optimum is each one's optimum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .l1_logistic import SparseDesign, l1_logistic, packed_slots


@dataclass
class LinearProbes:
    """``n_probes`` linear probes on raw inputs: ``logits = x @ weight.T + bias``."""

    weight: torch.Tensor  # [n_probes, n_features]
    bias: torch.Tensor  # [n_probes]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, n_probes]`` of inputs ``[n, n_features]``."""
        return x.float() @ self.weight.T + self.bias

    def directions(self) -> torch.Tensor:
        """Unit weight vectors ``[n_probes, n_features]``."""
        return self.weight / self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)


def balanced_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE of ``[n, p]`` logits: mean over rows, sum over probes."""
    labels = labels.float()
    losses = F.binary_cross_entropy_with_logits(
        logits, labels, pos_weight=_pos_weight(labels), reduction="none"
    )
    return losses.mean(-2).sum()


def _pos_weight(labels: torch.Tensor) -> torch.Tensor:
    """``n_negative / n_positive`` per probe (column of ``[n, p]`` labels)."""
    n_pos = labels.sum(-2, keepdim=True)
    n_neg = labels.shape[-2] - n_pos
    return (n_neg / n_pos.clamp_min(1.0)).clamp_min(1e-6)


class _BalancedBCE:
    """:func:`balanced_bce` of probe logits and its gradient, in ``[p, n]``
    layout (one row per probe: the matrix products then run along the long
    axis, about twice as fast here as ``[n, p]``).

    With ``w = pos_weight``, ``softplus(-l) = softplus(l) - l`` turns the
    per-row loss ``w y softplus(-l) + (1 - y) softplus(l)`` into
    ``a softplus(l) - w y l`` with ``a = w y + 1 - y``, whose derivative is
    ``a sigmoid(l) - w y``; both are averaged over rows.  Written out by
    hand, an LBFGS evaluation costs two matrix products and a few
    elementwise passes, with no autograd graph.
    """

    def __init__(self, labels: torch.Tensor):
        labels = labels.float()
        weighted = (_pos_weight(labels) * labels).T.contiguous()  # w y, [p, n]
        self.n = labels.shape[0]
        self.weighted = weighted / self.n
        self.coefficient = (weighted + 1.0 - labels.T) / self.n

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss (a scalar) and its gradient for ``[p, n]`` logits."""
        loss = (self.coefficient * F.softplus(logits) - self.weighted * logits).sum()
        grad = self.coefficient * torch.sigmoid(logits) - self.weighted
        return loss, grad


def fit_probes(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> LinearProbes:
    """One-vs-rest logistic probes sharing the inputs ``x`` ``[n, f]``, by
    LBFGS (``max_iter`` iterations) in whitened coordinates.

    ``labels`` is ``[n, p]`` bool.  Inputs are centred and divided by one
    overall scale for the fit and the probes mapped back, so the result
    applies to raw inputs.  The objective is :func:`balanced_bce` plus
    ``l2 * ||weight||^2``.
    """
    x = x.float()
    mean = x.mean(0, keepdim=True)
    # one scale, not one per feature: per-feature scaling would blow up
    # directions that only carry noise in the training rows
    scale = (x - mean).pow(2).mean().sqrt().clamp_min(1e-6)
    z = (x - mean) / scale
    weight, bias = _fit_shared(z, _BalancedBCE(labels), l2, max_iter)
    return LinearProbes(weight / scale, bias - (mean[0] / scale) @ weight.T)


def fit_sparse_probes(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    l2: float = 1e-3,
    max_steps: int = 100,
) -> LinearProbes:
    """One probe per input matrix: ``x`` is ``[p, n, k]`` (a few sparse
    features per probe, e.g. SAE latents), ``labels`` ``[n, p]`` bool.

    Same objective and input scaling as :func:`fit_probes` (per input
    matrix), solved exactly by :func:`fit_weighted_sparse_probes`.
    ``weight`` is ``[p, k]``.
    """
    objective = _BalancedBCE(labels)
    return fit_weighted_sparse_probes(
        x,
        objective.coefficient.double(),
        objective.weighted.double(),
        l2=l2,
        max_steps=max_steps,
        standardise=True,
    )


def fit_weighted_sparse_probes(
    x: torch.Tensor,
    coefficient: torch.Tensor,
    weighted: torch.Tensor,
    *,
    l2: float,
    max_steps: int = 100,
    standardise: bool = False,
) -> LinearProbes:
    """Per probe ``j`` (``x`` ``[p, n, k]``), the exact minimiser of
    ``sum_i (coefficient_ji softplus(l_ji) - weighted_ji l_ji) + l2 ||w_j||^2``
    over logits ``l_j = x_j w_j + b_j`` (bias unpenalised): a weighted
    logistic loss with ``weighted = coefficient x label`` for per-row class
    weights.  With ``standardise`` the fit runs on inputs centred and divided
    by one scale per probe, mapped back to raw inputs after.

    Rows whose ``k`` features are all zero have identical inputs, so each
    probe's are merged into one row carrying their summed weights: the fit
    then costs in the number of rows where a feature fires, not in ``n``.
    Solved by Newton's method in float64.
    """
    x = x.double()
    p, n, k = x.shape
    if standardise:
        mean = x.mean(1)  # [p, k]
        scale = (x - mean[:, None]).pow(2).mean((1, 2)).sqrt().clamp_min(1e-6)
    else:
        mean = torch.zeros(p, k, dtype=torch.float64)
        scale = torch.ones(p, dtype=torch.float64)
    *_, rows, used = packed_slots((x != 0).any(2))  # rows where a latent fires
    weights = []
    for per_row in (coefficient.double(), weighted.double()):
        kept = torch.where(used, per_row.gather(1, rows), 0.0)
        weights.append(torch.cat([kept, (per_row.sum(1) - kept.sum(1))[:, None]], 1))
    inputs = x[torch.arange(p)[:, None], rows]  # [p, slots, k]
    inputs = torch.cat([inputs, torch.zeros(p, 1, k, dtype=torch.float64)], 1)
    z = (inputs - mean[:, None]) / scale[:, None, None]
    weight, bias = _newton(z, *weights, l2, max_steps)
    raw_weight = weight / scale[:, None]
    raw_bias = bias - (mean / scale[:, None] * weight).sum(1)
    return LinearProbes(raw_weight.float(), raw_bias.float())


# Ridge added to the input covariance used as preconditioner (inputs are
# scaled to unit mean variance, so this is 1% of the average eigenvalue).
_PRECONDITIONER_RIDGE = 1e-2


def _fit_shared(z, objective, l2, max_iter):
    """Probes sharing one input matrix ``z`` ``[n, f]``, fitted in whitened
    coordinates.

    With ``C = z^T z / n + ridge I = L L^T``, the probes are fitted as
    ``weight = V L^{-1}`` on the inputs ``u = z L^{-T}`` (so the logits are
    unchanged) with the same penalty ``l2 ||weight||^2``: the objective and
    its optimum are those of the plain fit, but LBFGS sees a
    well-conditioned problem and gets there in far fewer steps on
    anisotropic inputs such as residual streams.
    """
    n, f = z.shape
    covariance = z.T @ z / n + _PRECONDITIONER_RIDGE * torch.eye(f)
    chol = torch.linalg.cholesky(covariance)
    u_t = torch.linalg.solve_triangular(chol, z.T.contiguous(), upper=False)  # [f, n]
    u = u_t.T.contiguous()

    def loss_and_grads(v, bias):
        weight = torch.linalg.solve_triangular(chol, v, upper=False, left=False)
        loss, grad = objective(v @ u_t + bias[:, None])  # [p, n] logits
        penalty_grad = torch.linalg.solve_triangular(
            chol.T, (2 * l2) * weight, upper=True, left=False
        )
        loss = loss + l2 * weight.pow(2).sum()
        return loss, grad @ u + penalty_grad, grad.sum(1)

    v, bias = _lbfgs(objective.weighted.shape[0], f, max_iter, loss_and_grads)
    return torch.linalg.solve_triangular(chol, v, upper=False, left=False), bias


def _newton(z, coefficient, weighted, l2, max_steps, tolerance=1e-7):
    """Minimise ``sum_r (coefficient softplus(l) - weighted l) + l2 ||w||^2``
    over logits ``l = z w + b``, per probe (``z`` ``[p, r, k]``), by Newton's
    method with Armijo backtracking, in float64; stops when every gradient
    entry is below ``tolerance``.  With a handful of features the
    ``[p, k + 1, k + 1]`` Hessians cost less than a gradient."""
    p, _, k = z.shape
    z1 = torch.cat([z, torch.ones(*z.shape[:2], 1, dtype=z.dtype)], 2)
    penalty = torch.full((k + 1,), 2 * l2, dtype=torch.float64)
    penalty[-1] = 0.0  # the bias (weight of the constant 1) is not penalised

    def losses(theta):
        logits = torch.bmm(z1, theta[:, :, None])[..., 0]
        loss = (coefficient * F.softplus(logits) - weighted * logits).sum(1)
        return loss + l2 * theta[:, :-1].pow(2).sum(1), logits

    theta = torch.zeros(p, k + 1, dtype=torch.float64)
    loss, logits = losses(theta)
    for _ in range(max_steps):
        probability = torch.sigmoid(logits)
        residual = coefficient * probability - weighted
        gradient = torch.bmm(residual[:, None, :], z1)[:, 0] + penalty * theta
        moving = gradient.abs().amax(1) > tolerance
        if not bool(moving.any()):
            break
        curvature = coefficient * probability * (1 - probability)
        hessian = torch.bmm(z1.transpose(1, 2), z1 * curvature[..., None])
        hessian = hessian + torch.diag_embed(penalty + 1e-12)
        step = -torch.linalg.solve(hessian, gradient)
        step = torch.where(moving[:, None], step, 0.0)  # converged probes stay
        length = torch.ones(p, dtype=torch.float64)
        slope = (gradient * step).sum(1)
        for _ in range(30):  # halve each probe's step until it decreases
            trial_loss, trial_logits = losses(theta + length[:, None] * step)
            bad = moving & (trial_loss > loss + 1e-4 * length * slope)
            if not bool(bad.any()):
                break
            length = torch.where(bad, length / 2, length)
        else:  # no decrease found for some probes: they stay put
            length = torch.where(bad, 0.0, length)
            trial_loss, trial_logits = losses(theta + length[:, None] * step)
        theta = theta + length[:, None] * step
        loss, logits = trial_loss, trial_logits
    return theta[:, :-1], theta[:, -1]


def _lbfgs(n_probes, n_features, max_iter, loss_and_grads):
    """Minimise ``loss_and_grads(weight, bias) -> (loss, d weight, d bias)``
    from zero by LBFGS with a strong-Wolfe line search."""
    weight = torch.zeros(n_probes, n_features)
    bias = torch.zeros(n_probes)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure():
        loss, weight.grad, bias.grad = loss_and_grads(weight, bias)
        return loss

    with torch.no_grad():
        optimizer.step(closure)
    return weight, bias


def f1_scores(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """F1 per column of ``[n, p]`` boolean predictions (0 where undefined)."""
    predicted, labels = predicted.bool(), labels.bool()
    tp = (predicted & labels).sum(0).float()
    fp = (predicted & ~labels).sum(0).float()
    fn = (~predicted & labels).sum(0).float()
    return torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)


def l1_ranking(codes: torch.Tensor, labels: torch.Tensor, *, l1: float, max_k: int):
    """Per probe, the ``max_k`` columns of ``codes`` an L1 logistic probe
    weights most (SAEBench's k-sparse pre-selection).

    ``codes`` is a sparse COO tensor ``[n, d]``, scaled here by its maximum;
    each one-vs-rest probe is class-balanced and minimises the mean log loss
    plus ``l1 * (||w||_1 + |b|)``, scikit-learn's liblinear objective, solved
    by :func:`.l1_logistic.l1_logistic` for all probes at once.  Columns with
    equal weight (e.g. 0) are ordered by their mean activation on positives
    minus negatives.  Returns ``[p, min(max_k, d)]`` column indices.
    SAEBench fits its pre-selection with a torch L1 probe (a fixed budget of
    Adam steps) instead; ``bench/compare_l1_probe.py`` compares the two.
    """
    codes = codes.coalesce()
    rows, columns = codes.indices()
    values = codes.values().double()
    values = values / values.max().clamp_min(1e-6)
    design = SparseDesign.from_entries(rows, columns, values, tuple(codes.shape))
    weight = l1_logistic(design, labels, l1=l1).weight
    labels = labels.double()
    positive = labels / labels.sum(0).clamp_min(1)
    negative = (1 - labels) / (1 - labels).sum(0).clamp_min(1)
    means = design.transposed @ torch.cat([positive, negative], 1)  # [d + 1, 2p]
    p = labels.shape[1]
    difference = (means[:-1, :p] - means[:-1, p:]).T  # [p, d]
    order = torch.sort(-difference, dim=1, stable=True).indices
    order = order.gather(
        1, torch.sort(-weight.gather(1, order), dim=1, stable=True).indices
    )
    return order[:, : min(max_k, codes.shape[1])]
