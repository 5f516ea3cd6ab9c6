"""BatchTopK selection and the sparse matrices it defines.

A batch of ``n`` rows keeps its ``round(k * n)`` largest positive
pre-activations over the whole ``[n, width]`` block.  The kept entries form
a sparse matrix ``S`` (CSR, row-major) whose products with dense matrices
are the whole decoder pass and the sparse part of the backward pass, at a
cost proportional to the number of kept entries instead of ``n * width``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch.nn.functional import embedding_bag


@dataclass
class Selection:
    """The kept entries of one batch, sorted by row then column."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    n_rows: int
    width: int
    _by_col: torch.Tensor | None = field(default=None, repr=False)
    _row_pointers: torch.Tensor | None = field(default=None, repr=False)

    @property
    def nnz(self) -> int:
        """Number of kept entries."""
        return int(self.cols.numel())

    def row_pointers(self) -> torch.Tensor:
        """CSR row pointers ``[n_rows + 1]`` of the row-major layout."""
        if self._row_pointers is None:
            self._row_pointers = _pointers(self.rows, self.n_rows)
        return self._row_pointers

    def times(self, right: torch.Tensor) -> torch.Tensor:
        """``S @ right`` (dense ``[n_rows, right.shape[1]]``)."""
        return _bag_sum(self.cols, right, self.row_pointers(), self.values)

    def transposed_times(
        self, right: torch.Tensor, values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``S.T @ right``, with ``S``'s own values or ``values`` (row order)."""
        values = self.values if values is None else values
        if self._by_col is None:
            self._by_col = torch.argsort(self.cols, stable=True)
        order = self._by_col
        pointers = _pointers(self.cols, self.width)
        return _bag_sum(self.rows[order], right, pointers, values[order])

    def matrix(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """``S`` as a CSR ``[n_rows, width]`` tensor (own or given values)."""
        values = self.values if values is None else values
        return csr(self.row_pointers(), self.cols, values, (self.n_rows, self.width))

    def sampled_products(self, left: torch.Tensor, right: torch.Tensor):
        """``(left @ right.T)[rows, cols]``: one dot product per kept entry."""
        pattern = self.matrix(torch.zeros_like(self.values))
        sampled = torch.sparse.sampled_addmm(pattern, left, right.T, beta=0.0)
        return sampled.values()

    def fired(self) -> torch.Tensor:
        """Boolean ``[width]``: which columns are active in this batch."""
        return torch.bincount(self.cols, minlength=self.width) > 0


def csr(pointers, columns, values, shape) -> torch.Tensor:
    """A CSR tensor from trusted parts (torch's beta warning silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return torch.sparse_csr_tensor(
            pointers, columns, values, shape, check_invariants=False
        )


def _bag_sum(index, table, pointers, weights) -> torch.Tensor:
    """Row ``i`` of the result: sum of ``weights[j] * table[index[j]]`` over
    ``pointers[i] <= j < pointers[i + 1]``."""
    return embedding_bag(
        index,
        table,
        pointers,
        mode="sum",
        per_sample_weights=weights.to(table.dtype),
        include_last_offset=True,
    )


def _pointers(sorted_index: torch.Tensor, n: int) -> torch.Tensor:
    counts = torch.bincount(sorted_index, minlength=n)
    pointers = torch.zeros(n + 1, dtype=torch.long, device=sorted_index.device)
    torch.cumsum(counts, 0, out=pointers[1:])
    return pointers


def batch_topk(pre: torch.Tensor, n_keep: int, hint: float = 0.0) -> Selection:
    """Keep the ``n_keep`` largest positive entries of ``pre`` ``[n, width]``.

    ``hint`` is a value believed to lie below the ``n_keep``-th largest entry
    (e.g. a fraction of the previous batch's cut-off).  When it does, only
    the entries above it are ranked, which is exact and much cheaper than
    ranking all ``n * width``; when it does not, all entries are ranked.
    """
    n_rows, width = pre.shape
    flat = pre.reshape(-1)
    n_keep = min(int(n_keep), flat.numel())
    candidates = None
    if hint > 0:
        candidates = torch.nonzero(flat > hint).squeeze(1)
        if candidates.numel() < n_keep:
            candidates = None
    if candidates is None:
        values, flat_index = torch.topk(flat, n_keep, sorted=False)
    else:
        values, picked = torch.topk(flat[candidates], n_keep, sorted=False)
        flat_index = candidates[picked]
    positive = values > 0
    if not bool(positive.all()):
        values, flat_index = values[positive], flat_index[positive]
    flat_index, order = torch.sort(flat_index)
    return Selection(
        rows=flat_index // width,
        cols=flat_index % width,
        values=values[order].float(),
        n_rows=n_rows,
        width=width,
    )


def threshold_select(pre: torch.Tensor, threshold: float) -> Selection:
    """Keep the entries of ``pre`` above ``threshold`` (and above zero)."""
    n_rows, width = pre.shape
    flat = pre.reshape(-1)
    flat_index = torch.nonzero(flat > max(float(threshold), 0.0)).squeeze(1)
    return Selection(
        rows=flat_index // width,
        cols=flat_index % width,
        values=flat[flat_index].float(),
        n_rows=n_rows,
        width=width,
    )


class TopValues:
    """The ``n`` largest values seen over a stream of tensors (exact)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.values = torch.empty(0)

    def add(self, block: torch.Tensor) -> None:
        """Offer every value of ``block``."""
        flat = block.reshape(-1).float()
        if self.values.device != flat.device:  # follows the values' device
            self.values = self.values.to(flat.device)
        if self.values.numel() >= self.n:
            flat = flat[flat > self.values.min()]
        merged = torch.cat([self.values, flat])
        if merged.numel() > self.n:
            merged = torch.topk(merged, self.n, sorted=False).values
        self.values = merged

    def sorted(self) -> torch.Tensor:
        """The kept values, largest first."""
        return torch.sort(self.values, descending=True).values
