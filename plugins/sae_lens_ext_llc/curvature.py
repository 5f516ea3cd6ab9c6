"""Curvature at w*: the lowest Hessian eigenvalue by Lanczos on Hessian-vector products.

An LLC estimate assumes w* is a local minimum.  At a saddle the chains drift
to lower loss along the negative-curvature direction, and the estimate mixes
that descent with the local geometry (it can stay positive, so the sign alone
does not reveal it).  The Hessian H of the full-data loss at w* tells: its
lowest eigenvalue is negative exactly when some direction curves down.

Hessian-vector products are forward-over-reverse derivatives
(``torch.func.jvp`` of ``torch.func.grad`` of a ``functional_call``), one per
Lanczos iteration, summed over the data in chunks; no d x d matrix is formed.
Lanczos with full reorthogonalisation finds the extreme eigenvalues of H in a
few dozen products.  For models with more than ``max_params`` sampled
weights, the iteration runs on a random subset of coordinates (the Hessian's
principal submatrix there, every other weight held at w*): by Cauchy
interlacing its lowest eigenvalue is never below H's, so a negative value
found there is a real negative-curvature direction of H (a saddle can be
missed, never invented).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from .data import Data, chunks, take_rows
from .sampler import LossModule, autocast_context

LANCZOS_ITERATIONS = 30
MAX_PARAMS = 2_000_000


@dataclass
class CurvatureReport:
    """The extreme Hessian eigenvalues at w* and the lowest one's direction.

    ``lowest`` / ``highest``: the smallest and largest Ritz values.
    ``direction_shares``: each parameter's share of the squared mass of the
    lowest eigenvector, largest first (names as in ``named_parameters``).
    ``top_coordinates``: the eigenvector's largest entries as
    ``(name, index, value)``.  ``dimension``: how many coordinates the
    iteration ran on (all sampled weights, or a random subset of them).
    """

    lowest: float
    highest: float
    direction_shares: list[tuple[str, float]]
    top_coordinates: list[tuple[str, tuple[int, ...], float]]
    dimension: int
    n_params: int
    iterations: int

    def direction_text(self, top: int = 3) -> str:
        """The parameters dominating the lowest eigenvector, as text."""
        shares = ", ".join(
            f"{name} {share:.0%}" for name, share in self.direction_shares[:top]
        )
        entries = ", ".join(
            f"{name}{list(index)} {value:+.2f}"
            for name, index, value in self.top_coordinates[:top]
        )
        return f"{shares} (largest entries: {entries})"


def lowest_hessian_eigenvalue(
    loss_module: LossModule,
    anchor: dict[str, torch.Tensor],
    data: Data,
    n_rows: int,
    batch_size: int,
    *,
    iterations: int = LANCZOS_ITERATIONS,
    max_params: int = MAX_PARAMS,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> CurvatureReport:
    """Lanczos estimate of the extreme Hessian eigenvalues of the loss at ``anchor``.

    ``anchor`` maps ``loss_module`` parameter names to their values at w*;
    the loss is the mean over all ``n_rows`` rows of ``data``, computed in
    chunks of ``batch_size`` rows.  Runs ``iterations`` Hessian-vector
    products (fewer if the space is smaller), on a random subset of
    ``max_params`` coordinates when there are more sampled weights.
    """
    names = list(anchor)
    sizes = [anchor[name].numel() for name in names]
    n_params = sum(sizes)
    device = anchor[names[0]].device
    generator = torch.Generator().manual_seed(seed)
    subset = None
    if n_params > max_params:
        subset = torch.randperm(n_params, generator=generator)[:max_params]
        subset = subset.sort().values.to(device)
    dimension = n_params if subset is None else max_params
    anchor32 = {name: value.detach().float() for name, value in anchor.items()}
    batches = [take_rows(data, index) for index in chunks(n_rows, batch_size)]
    weights = [len(index) / n_rows for index in chunks(n_rows, batch_size)]

    def loss_at(params, batch):
        with autocast_context(device, autocast_dtype):
            return functional_call(loss_module, params, (batch,)).float()

    def hessian_times(vector: torch.Tensor) -> torch.Tensor:
        full = vector
        if subset is not None:
            full = torch.zeros(n_params, device=device).index_copy_(0, subset, vector)
        tangent = {
            name: part.view_as(anchor32[name])
            for name, part in zip(names, full.split(sizes), strict=True)
        }
        product = torch.zeros(n_params, device=device)
        for batch, weight in zip(batches, weights, strict=True):
            # reverse over reverse: grad of <grad L, v>.  (torch.func's jvp
            # would first register its decompositions, ~4 s once per process.)
            params = {n: v.clone().requires_grad_(True) for n, v in anchor32.items()}
            leaves = list(params.values())
            # weights the loss ignores or reads linearly have zero Hessian rows
            gradients = torch.autograd.grad(
                loss_at(params, batch), leaves, create_graph=True, allow_unused=True
            )
            along = sum(
                (g * tangent[n]).sum()
                for n, g in zip(names, gradients, strict=True)
                if g is not None and g.requires_grad
            )
            if not torch.is_tensor(along):  # the loss is at most linear
                continue
            hvp = torch.autograd.grad(along, leaves, materialize_grads=True)
            flat = torch.cat([h.reshape(-1) for h in hvp])
            product.add_(flat, alpha=weight)
        return product if subset is None else product[subset]

    steps = min(iterations, dimension)
    basis = torch.zeros(steps, dimension, device=device)
    start = torch.randn(dimension, generator=generator).to(device)
    basis[0] = start / start.norm()
    alphas, betas = [], []
    for k in range(steps):
        product = hessian_times(basis[k])
        alpha = float(product @ basis[k])
        alphas.append(alpha)
        # full reorthogonalisation (twice) keeps the basis orthonormal in float32
        for _ in range(2):
            product -= basis[: k + 1].T @ (basis[: k + 1] @ product)
        beta = float(product.norm())
        if k + 1 == steps or beta < 1e-10 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        basis[k + 1] = product / beta
    used = len(alphas)
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[: used - 1], dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    ritz = vectors[:, 0].float().to(device) @ basis[:used]
    return CurvatureReport(
        lowest=float(values[0]),
        highest=float(values[-1]),
        direction_shares=_shares(ritz, names, sizes, subset, n_params),
        top_coordinates=_top_coordinates(ritz, names, anchor, subset),
        dimension=dimension,
        n_params=n_params,
        iterations=used,
    )


def _full_vector(ritz, subset, n_params):
    if subset is None:
        return ritz
    return torch.zeros(n_params, device=ritz.device).index_copy_(0, subset, ritz)


def _shares(ritz, names, sizes, subset, n_params) -> list[tuple[str, float]]:
    full = _full_vector(ritz, subset, n_params)
    mass = [float(part.pow(2).sum()) for part in full.split(sizes)]
    total = sum(mass) or 1.0
    shares = [
        (name.removeprefix("model."), m / total)
        for name, m in zip(names, mass, strict=True)
    ]
    return sorted(shares, key=lambda item: -item[1])


def _top_coordinates(ritz, names, anchor, subset, top: int = 5):
    sizes = [anchor[name].numel() for name in names]
    n_params = sum(sizes)
    full = _full_vector(ritz, subset, n_params)
    ends = torch.tensor(sizes).cumsum(0)
    found = []
    for flat_index in full.abs().topk(min(top, n_params)).indices.tolist():
        which = int(torch.searchsorted(ends, flat_index, right=True))
        local = flat_index - (int(ends[which - 1]) if which else 0)
        shape = anchor[names[which]].shape
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(local), shape))
        found.append(
            (names[which].removeprefix("model."), index, float(full[flat_index]))
        )
    return found
