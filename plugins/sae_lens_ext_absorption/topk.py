"""A running top-N of (value, global row id) per latent over a stream of rows.

Memory is ``d_sae x N`` values and ids whatever the number of rows.  Each
update only looks at the entries that beat a latent's current N-th best
value, so after the first batches an update costs one comparison pass over
the score matrix plus work proportional to the few entries that qualify.
Everything stays on the device of the lists (that of the activations); only
CPU tensors take NumPy's faster comparison, with the same results.
"""

from __future__ import annotations

import numpy as np
import torch

# Above this fraction of qualifying entries a dense top-k is cheaper.
_DENSE_FRACTION = 0.05


def on_host(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a CPU tensor, so NumPy may read it in place."""
    return tensor.device.type == "cpu"


def entries_above(scores: torch.Tensor, bar, limit: int | None = None):
    """``(row, column)`` indices, in row-major order, of the entries of a
    ``[r, c]`` matrix above ``bar`` (``[r]``, one bar per row, or a number);
    ``None`` if there are more than ``limit``.  The indices are on the
    matrix's device.

    On CPU, NumPy's comparison and ``flatnonzero`` run about 3x faster than
    ``torch.nonzero`` on one thread (2.4 vs 6-7 ms on a 4M-entry matrix);
    other devices use torch (:func:`entries_above_torch`), same result.
    """
    if not on_host(scores):
        return entries_above_torch(scores, bar, limit)
    scores = scores.contiguous()
    bar = bar.numpy()[:, None] if isinstance(bar, torch.Tensor) else bar
    above = scores.numpy() > bar
    if limit is not None and np.count_nonzero(above) > limit:
        return None
    flat = torch.from_numpy(np.flatnonzero(above))
    return flat // scores.shape[1], flat % scores.shape[1]


def entries_above_torch(scores: torch.Tensor, bar, limit: int | None = None):
    """:func:`entries_above` in torch alone, on the matrix's device."""
    bar = bar[:, None] if isinstance(bar, torch.Tensor) else bar
    above = scores > bar
    if limit is not None and int(above.count_nonzero()) > limit:
        return None
    flat = flat_nonzero(above)
    return flat // scores.shape[1], flat % scores.shape[1]


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Flat (row-major) indices of the true entries of a boolean tensor, on
    its device (by NumPy for a CPU tensor, as in :func:`entries_above`)."""
    if on_host(mask):
        return torch.from_numpy(np.flatnonzero(mask.contiguous().numpy()))
    return mask.reshape(-1).nonzero()[:, 0]


def take(matrix: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor):
    """``matrix[rows, columns]`` by one flat ``index_select`` when ``matrix``
    or its transpose is contiguous (indexing with two index tensors is ~15x
    slower on CPU here)."""
    if matrix.is_contiguous():
        return matrix.view(-1).index_select(0, rows * matrix.shape[1] + columns)
    if matrix.T.is_contiguous():
        return matrix.T.reshape(-1).index_select(0, columns * matrix.shape[0] + rows)
    return matrix[rows, columns]


def _select(index: torch.Tensor, *tensors: torch.Tensor):
    """Each tensor's elements at ``index`` (1-d ``index_select``, several
    times faster than ``tensor[index]`` on CPU)."""
    return tuple(t.index_select(0, index) for t in tensors)


class StreamingTopK:
    """The ``n_top`` largest values seen per column, with their row ids.

    ``values[i]`` is sorted in decreasing order; unused slots hold ``-inf``
    with row id ``-1``.  ``payload`` carries one more number per kept entry
    (e.g. the latent's own activation on the row), 0 in unused slots.
    """

    def __init__(self, n_columns: int, n_top: int, device=None):
        if n_top < 1:
            raise ValueError("n_top must be at least 1")
        self.n_top = n_top
        self.values = torch.full((n_columns, n_top), float("-inf"), device=device)
        self.ids = torch.full((n_columns, n_top), -1, dtype=torch.long, device=device)
        self.payload = torch.zeros(n_columns, n_top, device=device)

    @property
    def device(self) -> torch.device:
        """Where the lists live."""
        return self.values.device

    @property
    def threshold(self) -> torch.Tensor:
        """Per column, the value a new entry must exceed to enter the top-N."""
        return self.values[:, -1]

    def update_dense(
        self,
        scores: torch.Tensor,
        offset: int,
        *,
        floor: float | None = None,
        payload: torch.Tensor | None = None,
    ) -> None:
        """Merge a ``[n_columns, n_rows]`` score matrix (one row of scores per
        column of the top-N, so the per-column passes read contiguous memory)
        whose rows have ids ``offset + arange(n_rows)``; entries not above
        ``floor`` are ignored.  ``payload`` (same shape as ``scores``, any
        strides) is kept alongside."""
        scores = scores.float()
        bar = self.threshold
        if floor is not None:
            bar = bar.clamp_min(floor)
        columns = (scores.amax(1) > bar).nonzero()[:, 0]
        if columns.numel() == 0:
            return
        if columns.numel() < _DENSE_FRACTION * scores.shape[0]:
            # few columns can change: look only at those
            local, rows = entries_above(scores[columns], bar[columns])
            cols = columns[local]
        else:
            found = entries_above(scores, bar, int(_DENSE_FRACTION * scores.numel()))
            if found is None:
                self._merge_dense(scores, offset, floor, payload)
                return
            cols, rows = found
        extra = None if payload is None else take(payload, cols, rows)
        self.update_entries(cols, take(scores, cols, rows), rows + offset, extra)

    def _merge_dense(self, scores, offset, floor, payload) -> None:
        """Merge each column's top-N of a ``[n_columns, n_rows]`` batch."""
        k = min(self.n_top, scores.shape[1])
        values, rows = scores.topk(k, dim=1)
        extra = (
            torch.zeros_like(values)
            if payload is None
            else payload.gather(1, rows).float()
        )
        ids = rows + offset
        if floor is not None:
            keep = values > floor
            values = torch.where(keep, values, float("-inf"))
            ids = torch.where(keep, ids, -1)
            extra = torch.where(keep, extra, 0.0)
        self._merge(values, ids, extra)

    def update_entries(
        self,
        columns: torch.Tensor,
        values: torch.Tensor,
        ids: torch.Tensor,
        payload: torch.Tensor | None = None,
    ) -> None:
        """Merge individual ``(column, value, row id[, payload])`` entries."""
        if columns.numel() == 0:
            return
        values = values.float()
        extra = torch.zeros_like(values) if payload is None else payload.float()
        keep = (values > self.threshold.index_select(0, columns)).nonzero()[:, 0]
        if keep.numel() == 0:
            return
        columns, values, ids, extra = _select(keep, columns, values, ids, extra)
        order = values.argsort(descending=True, stable=True)
        columns, values, ids, extra = _select(order, columns, values, ids, extra)
        order = columns.argsort(stable=True)
        columns, values, ids, extra = _select(order, columns, values, ids, extra)
        counts = torch.bincount(columns, minlength=self.values.shape[0])
        starts = counts.cumsum(0) - counts
        rank = torch.arange(columns.numel(), device=self.device) - starts.index_select(
            0, columns
        )
        keep = (rank < self.n_top).nonzero()[:, 0]
        columns, values, ids, extra, rank = _select(
            keep, columns, values, ids, extra, rank
        )
        # merge only the columns that received entries
        touched = (counts > 0).nonzero()[:, 0]
        slot = torch.zeros_like(counts)
        slot[touched] = torch.arange(len(touched), device=self.device)
        where = slot[columns], rank
        shape = (len(touched), self.n_top)
        new_values = torch.full(shape, float("-inf"), device=self.device)
        new_ids = torch.full(shape, -1, dtype=self.ids.dtype, device=self.device)
        new_extra = torch.zeros(shape, device=self.device)
        new_values[where] = values
        new_ids[where] = ids
        new_extra[where] = extra
        self._merge(new_values, new_ids, new_extra, touched)

    def _merge(
        self,
        values: torch.Tensor,
        ids: torch.Tensor,
        extra: torch.Tensor,
        columns: torch.Tensor | None = None,
    ) -> None:
        """Merge sorted candidate lists into those of ``columns`` (all: None)."""
        if columns is None:
            columns = torch.arange(self.values.shape[0], device=self.device)
        both_values = torch.cat([self.values[columns], values], dim=1)
        top = both_values.topk(self.n_top, dim=1)
        self.values[columns] = top.values
        self.ids[columns] = torch.cat([self.ids[columns], ids], 1).gather(
            1, top.indices
        )
        self.payload[columns] = torch.cat([self.payload[columns], extra], 1).gather(
            1, top.indices
        )

    def live_ids(self) -> torch.Tensor:
        """The distinct row ids held in any column, sorted."""
        ids = self.ids[self.ids >= 0]
        return torch.unique(ids)
