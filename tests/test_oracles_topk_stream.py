"""Absorption's streaming top-N against a Python sort of everything streamed.

Each column keeps the ``n_top`` largest values it was offered (above the
floor, when one is given), with their row ids and payloads, largest first;
unused slots hold ``-inf``, id ``-1`` and payload 0.  The oracle collects
every (value, id, payload) per column and sorts it.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens_ext_absorption.topk import (
    StreamingTopK,
    entries_above,
    entries_above_torch,
)


def expected_top(offers, n_columns, n_top, floor=None):
    """Per column, the ``n_top`` largest offered (value, id, payload), padded."""
    table = []
    for column in range(n_columns):
        kept = [o for o in offers if o[0] == column and (floor is None or o[1] > floor)]
        best = sorted(kept, key=lambda o: -o[1])[:n_top]
        rows = [(value, row, extra) for _, value, row, extra in best]
        rows += [(float("-inf"), -1, 0.0)] * (n_top - len(rows))
        table.append(rows)
    return table


def check(stream, table):
    """The stream's values, ids and payloads equal the oracle's table."""
    for column, rows in enumerate(table):
        assert stream.values[column].tolist() == [r[0] for r in rows]
        assert stream.ids[column].tolist() == [r[1] for r in rows]
        assert stream.payload[column].tolist() == [r[2] for r in rows]


@pytest.mark.parametrize("floor", [None, 0.5])
@pytest.mark.parametrize("n_columns", [3, 40])  # few columns / many columns change
def test_dense_batches_keep_each_columns_top_n(floor, n_columns):
    generator = torch.Generator().manual_seed(n_columns)
    stream = StreamingTopK(n_columns, n_top=4)
    offers, offset = [], 0
    for n_rows in (3, 9, 1, 6):
        scores = torch.randn(n_columns, n_rows, generator=generator)
        payload = torch.randn(n_columns, n_rows, generator=generator)
        stream.update_dense(scores, offset, floor=floor, payload=payload)
        offers += [
            (c, float(scores[c, r]), offset + r, float(payload[c, r]))
            for c in range(n_columns)
            for r in range(n_rows)
        ]
        offset += n_rows
    check(stream, expected_top(offers, n_columns, 4, floor))
    live = sorted(
        {r[1] for rows in expected_top(offers, n_columns, 4, floor) for r in rows}
        - {-1}
    )
    assert stream.live_ids().tolist() == live


def test_entries_keep_each_columns_top_n_including_single_entries():
    stream = StreamingTopK(6, n_top=3)
    calls = [
        # column 1 gets one entry only; column 3 one, in a call of one entry;
        # column 5 none; column 0 more than n_top, the last one a tie with its
        # third (the first offered is kept)
        ([0, 0, 1, 0, 0], [0.2, 0.9, 0.4, 0.5, 0.1], [10, 11, 12, 13, 14]),
        ([2, 0, 2, 4], [1.5, 0.05, 0.7, -0.3], [20, 21, 22, 23]),
        ([], [], []),
        ([3], [0.3], [25]),
        ([0, 4, 4], [0.6, 0.8, -0.1], [30, 31, 32]),
        ([0], [0.5], [40]),
    ]
    offers = []
    for columns, values, ids in calls:
        payload = [v * 10 for v in values]
        stream.update_entries(
            torch.tensor(columns, dtype=torch.long),
            torch.tensor(values),
            torch.tensor(ids, dtype=torch.long),
            torch.tensor(payload),
        )
        offers += [
            (c, float(torch.tensor(v)), i, float(torch.tensor(p)))
            for c, v, i, p in zip(columns, values, ids, payload, strict=True)
        ]
    check(stream, expected_top(offers, 6, 3))
    assert stream.threshold.tolist() == [r[-1][0] for r in expected_top(offers, 6, 3)]


def test_entries_above_a_bar_and_the_limit():
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.7]])
    rows, cols = entries_above(scores, torch.tensor([0.25, 0.5]))
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 2),
    ]
    rows, cols = entries_above(scores, 0.75, limit=2)  # 2 entries: within the limit
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 1), (1, 0)]
    assert entries_above(scores, 0.0, limit=5) is None  # 6 entries: over it
    with pytest.raises(ValueError, match="n_top"):
        StreamingTopK(3, 0)


@pytest.mark.parametrize("limit", [None, 3, 4])
def test_the_torch_path_finds_the_same_entries_as_a_loop(limit):
    # entries_above_torch serves devices other than the CPU; run here on CPU tensors
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.7]])
    bar = torch.tensor([0.25, 0.5])
    loop = [(r, c) for r in range(2) for c in range(3) if scores[r, c] > bar[r]]
    found = entries_above_torch(scores, bar, limit)
    if limit == 3:
        assert found is None  # 4 entries: over the limit
        return
    rows, cols = found
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == loop


def test_a_top_one_stream_keeps_each_columns_maximum():
    generator = torch.Generator().manual_seed(1)
    stream = StreamingTopK(5, n_top=1)
    offers, offset = [], 0
    for n_rows in (4, 2, 7):
        scores = torch.randn(5, n_rows, generator=generator)
        stream.update_dense(scores, offset)
        offers += [
            (c, float(scores[c, r]), offset + r, 0.0)
            for c in range(5)
            for r in range(n_rows)
        ]
        offset += n_rows
    check(stream, expected_top(offers, 5, 1))


SCORES = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.7]])
BAR = torch.tensor([0.25, 0.5])
LOOP = [(r, c) for r in range(2) for c in range(3) if SCORES[r, c] > BAR[r]]


def test_matrices_off_the_host_take_the_torch_path(monkeypatch):
    # on_host is false for a GPU tensor; forcing it here runs the torch
    # branches (entries_above_torch, flat_nonzero's nonzero) on CPU memory.
    import sae_lens_ext_absorption.topk as topk

    monkeypatch.setattr(topk, "on_host", lambda tensor: False)
    rows, cols = topk.entries_above(SCORES, BAR)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == LOOP
    flat = topk.flat_nonzero(SCORES > BAR[:, None])
    assert flat.tolist() == [r * 3 + c for r, c in LOOP]


def test_cpu_matrices_take_the_numpy_path(monkeypatch):
    # The module docstring: only CPU tensors take NumPy's (faster) comparison.
    import sae_lens_ext_absorption.topk as topk

    def refuse(*args, **kwargs):
        raise AssertionError("a CPU matrix took the torch path")

    monkeypatch.setattr(topk, "entries_above_torch", refuse)
    rows, cols = topk.entries_above(SCORES, BAR)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == LOOP
    assert topk.on_host(SCORES) and not topk.on_host(torch.zeros(1, device="meta"))
