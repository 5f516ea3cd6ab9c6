"""CPU thread control shared by analyses that run their own tight loops."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def machine_is_busy() -> bool:
    """Whether the 1-minute load average already fills every CPU core.

    Then every parallel region waits for a thread the scheduler has parked,
    and one torch thread runs a small loop several times faster than two.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        return False
    return load >= (os.cpu_count() or 1)


@contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
