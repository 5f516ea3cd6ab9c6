"""The data an LLC estimate samples from: validation and minibatches.

``data`` is a tensor, a tuple/list of tensors or a dict of tensors, all with
the same number of rows (dim 0).  A minibatch is the same structure indexed
by a set of rows, which is what ``loss_fn(model, batch)`` receives.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

Data = torch.Tensor | tuple | list | dict


def _leaves(data: Any) -> list[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, (tuple, list)):
        return [leaf for item in data for leaf in _leaves(item)]
    if isinstance(data, dict):
        return [leaf for item in data.values() for leaf in _leaves(item)]
    raise TypeError(
        f"data must be a tensor, a tuple/list of tensors or a dict of tensors "
        f"(rows along dim 0), got {type(data).__name__}; convert it with "
        "torch.as_tensor or pass (inputs, targets)"
    )


def num_rows(data: Data) -> int:
    """Rows shared by every tensor in ``data``; raise ValueError if none or mixed."""
    leaves = _leaves(data)
    if not leaves:
        raise ValueError("data holds no tensors; pass at least one tensor of rows")
    sizes = {leaf.shape[0] if leaf.dim() else 0 for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(
            f"every tensor in data needs the same number of rows (dim 0), got "
            f"{sorted(sizes)}; slice them to a common length"
        )
    rows = sizes.pop()
    if rows == 0:
        raise ValueError(
            "data is empty (0 rows): the LLC needs samples to compute a loss; "
            "pass the dataset the model was trained on, or a sample of it"
        )
    return rows


def take_rows(data: Data, index: torch.Tensor) -> Data:
    """The rows ``index`` of every tensor in ``data``, same structure."""
    if isinstance(data, torch.Tensor):
        return data[index.to(data.device)]
    if isinstance(data, (tuple, list)):
        return type(data)(take_rows(item, index) for item in data)
    return {key: take_rows(item, index) for key, item in data.items()}


def to_device(data: Data, device: torch.device | str) -> Data:
    """``data`` with every tensor moved to ``device``."""
    if isinstance(data, torch.Tensor):
        return data.to(device)
    if isinstance(data, (tuple, list)):
        return type(data)(to_device(item, device) for item in data)
    return {key: to_device(item, device) for key, item in data.items()}


def minibatches(
    n_rows: int, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Row indices of endless minibatches, reshuffled every epoch.

    Every batch has exactly ``batch_size`` rows (a short tail is dropped),
    so each draw's loss is an unbiased estimate of the full-data loss.
    """
    if batch_size >= n_rows:
        full = torch.arange(n_rows)
        while True:
            yield full
    per_epoch = n_rows // batch_size
    while True:
        order = torch.randperm(n_rows, generator=generator)
        for start in range(0, per_epoch * batch_size, batch_size):
            yield order[start : start + batch_size]


def chunks(n_rows: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Row indices covering all rows once, in order, ``batch_size`` at a time."""
    for start in range(0, n_rows, batch_size):
        yield torch.arange(start, min(start + batch_size, n_rows))
