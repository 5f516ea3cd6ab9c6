"""How many CPU threads the sampler runs with.

On a loaded machine every parallel region of a torch op waits for a thread
the scheduler has parked: the LLC of an SAE took 60 s at two threads where
one thread took 0.4 s.  And for SAE-sized problems one thread is faster even
on a quiet machine, because the sampler's noise worker uses the other core.
So by default small problems, and any problem on a busy machine, run on one
thread; large ones on a quiet machine keep torch's setting.
"""

from __future__ import annotations

import torch

from sae_lens_ext import machine_is_busy, thread_limit

__all__ = ["choose_threads", "machine_is_busy", "thread_limit"]

SMALL_PROBLEM = 2**27  # sampled weights x rows per step


def choose_threads(
    threads: int | None, n_params: int, batch_size: int, device: torch.device
) -> int:
    """``threads`` if given, else 1 for small problems or a busy machine on CPU,
    else torch's current thread count."""
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be None or >= 1, got {threads}")
        return int(threads)
    if device.type != "cpu":
        return torch.get_num_threads()
    if n_params * batch_size < SMALL_PROBLEM or machine_is_busy():
        return 1
    return torch.get_num_threads()
