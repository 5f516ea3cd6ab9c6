"""BatchTopK selection and its sparse products against brute-force Python loops.

The oracles rank entries with Python's ``sorted`` and build the dense matrix
of kept entries cell by cell, sharing no code with ``batchtopk.py`` (which
uses ``torch.topk``, CSR pointers and ``embedding_bag``).
"""

from __future__ import annotations

import pytest
import torch
from sae_lens_ext_meta_sae.batchtopk import TopValues, batch_topk, threshold_select


def brute_force_kept(pre: torch.Tensor, n_keep: int) -> list[tuple[int, int]]:
    """(row, col) of the ``n_keep`` largest entries that are > 0, in row-major order."""
    width = pre.shape[1]
    cells = [
        (value, i // width, i % width) for i, value in enumerate(pre.flatten().tolist())
    ]
    ranked = sorted(cells, reverse=True)[:n_keep]
    return sorted((row, col) for value, row, col in ranked if value > 0)


def dense_by_hand(rows, cols, values, shape) -> torch.Tensor:
    """The dense matrix with ``values`` at (``rows``, ``cols``), filled one cell at a time."""
    dense = torch.zeros(shape, dtype=torch.float64)
    for row, col, value in zip(
        rows.tolist(), cols.tolist(), values.tolist(), strict=True
    ):
        dense[row, col] = value
    return dense


def matmul_by_hand(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` by explicit sums (float64)."""
    out = torch.zeros(left.shape[0], right.shape[1], dtype=torch.float64)
    for i in range(left.shape[0]):
        for j in range(right.shape[1]):
            out[i, j] = sum(
                float(left[i, t]) * float(right[t, j]) for t in range(left.shape[1])
            )
    return out


def distinct_pre(n_rows: int, width: int, seed: int) -> torch.Tensor:
    """Distinct values ``(0, 1, ..., n - 1) - 0.4 n) / 10`` in a random order (no ties)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randperm(n_rows * width, generator=generator).double()
    return ((values - 0.4 * n_rows * width) / 10).reshape(n_rows, width)


@pytest.mark.parametrize(
    ("n_keep", "hint"),
    [
        (9, 0.0),  # rank everything
        (9, 0.05),  # a hint well below the cut-off: only candidates ranked
        (9, 5.81),  # a hint just below the 9th largest entry (5.82)
        (9, 5.82),  # a hint at the 9th largest (rounding decides the path)
        (30, 3.0),  # a hint above the cut-off: too few candidates, all ranked
        (80, 0.0),  # more than the 67 positive entries: non-positives dropped
        (200, 1.0),  # more than the whole block
    ],
)
def test_batch_topk_keeps_the_brute_force_top_entries(n_keep, hint):
    pre = distinct_pre(7, 16, seed=1)  # 112 entries (-4.48 to 6.62), 67 of them > 0
    selection = batch_topk(pre, n_keep, hint)
    expected = brute_force_kept(pre, n_keep)
    assert (
        list(zip(selection.rows.tolist(), selection.cols.tolist(), strict=True))
        == expected
    )
    assert selection.nnz == len(expected)
    assert selection.values.dtype == torch.float32
    kept_values = torch.tensor([float(pre[r, c]) for r, c in expected]).float()
    assert selection.values.tolist() == kept_values.tolist()
    assert (selection.n_rows, selection.width) == (7, 16)


def test_threshold_select_keeps_entries_above_the_threshold_and_zero():
    pre = distinct_pre(5, 9, seed=2)
    for threshold in (-1.0, 0.0, 0.35, 2.05):
        selection = threshold_select(pre, threshold)
        cut = max(threshold, 0.0)
        expected = [
            (r, c) for r in range(5) for c in range(9) if float(pre[r, c]) > cut
        ]
        kept = list(zip(selection.rows.tolist(), selection.cols.tolist(), strict=True))
        assert kept == expected
        kept_values = torch.tensor([float(pre[r, c]) for r, c in expected]).float()
        assert selection.values.tolist() == kept_values.tolist()


@pytest.fixture
def uneven_selection():
    """A selection with empty rows and columns, and a row holding several entries."""
    pre = torch.full((6, 5), -1.0, dtype=torch.float64)
    kept = {(0, 4): 2.0, (2, 0): 1.5, (2, 3): 0.5, (2, 4): 3.0, (5, 1): 0.25}
    for (row, col), value in kept.items():
        pre[row, col] = value
    selection = batch_topk(pre, len(kept))
    dense = dense_by_hand(
        torch.tensor([r for r, _ in kept]),
        torch.tensor([c for _, c in kept]),
        torch.tensor(list(kept.values())),
        (6, 5),
    )
    return selection, dense


def test_sparse_products_equal_hand_computed_sums(uneven_selection):
    selection, dense = uneven_selection
    generator = torch.Generator().manual_seed(5)
    right = torch.randn(5, 3, generator=generator)
    left = torch.randn(6, 3, generator=generator)
    assert selection.row_pointers().tolist() == [0, 1, 1, 4, 4, 4, 5]
    assert selection.fired().tolist() == [True, True, False, True, True]
    assert torch.equal(selection.matrix().to_dense().double(), dense)
    torch.testing.assert_close(
        selection.times(right).double(), matmul_by_hand(dense, right.double())
    )
    torch.testing.assert_close(
        selection.transposed_times(left).double(),
        matmul_by_hand(dense.T, left.double()),
    )
    other = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0])  # row-major order of the kept
    reweighted = dense_by_hand(selection.rows, selection.cols, other, (6, 5))
    torch.testing.assert_close(
        selection.transposed_times(left, other).double(),
        matmul_by_hand(reweighted.T, left.double()),
    )
    assert torch.equal(selection.matrix(other).to_dense().double(), reweighted)
    products = matmul_by_hand(left.double(), right.double().T)
    expected = [
        float(products[r, c])
        for r, c in zip(selection.rows, selection.cols, strict=True)
    ]
    torch.testing.assert_close(
        selection.sampled_products(left, right).double(),
        torch.tensor(expected, dtype=torch.float64),
    )


def test_top_values_of_a_stream_equal_a_full_sort():
    generator = torch.Generator().manual_seed(6)
    blocks = [
        torch.randn(3, generator=generator),  # fewer than n so far
        torch.randn(4, 5, generator=generator),  # a 2-D block
        torch.full((6,), 0.3),  # ties
        torch.randn(40, generator=generator) - 3,  # nothing large enough
        torch.randn(2, 2, generator=generator) + 2,
    ]
    everything = sorted((v for b in blocks for v in b.flatten().tolist()), reverse=True)
    for n in (1, 7, 12, 100):
        top = TopValues(n)
        for block in blocks:
            top.add(block)
        assert top.sorted().tolist() == pytest.approx(everything[:n], abs=0)


def test_a_hint_below_the_cut_off_ranks_only_the_entries_above_it(monkeypatch):
    # The hint is what makes training cheap: with a hint below the 9th largest
    # of 112 entries, only the entries above the hint are ranked.
    ranked_sizes = []
    topk = torch.topk

    def recording_topk(values, *args, **kwargs):
        ranked_sizes.append(values.numel())
        return topk(values, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", recording_topk)
    pre = distinct_pre(7, 16, seed=1)
    above = int((pre > 5.0).sum())
    assert 9 < above < 112
    batch_topk(pre, 9, hint=5.0)
    assert ranked_sizes == [above]
    batch_topk(pre, 9, hint=0.0)  # no hint: everything ranked
    assert ranked_sizes == [above, 112]
