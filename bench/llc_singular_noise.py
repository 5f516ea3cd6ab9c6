"""The seed-to-seed noise of the LLC estimate in ``test_singular_model_is_clearly_below_d_over_2``.

    PYTHONPATH=.:plugins python bench/llc_singular_noise.py

Runs the test's estimate (a 4-4-4 deep linear network fitted to rank-2 data,
200 draws, step 5e-4) for 10 chain seeds on the test's data and for 5 more
data seeds at chain seed 0, and prints each estimate with the mean and
standard deviation of each set; the test's window is set from these.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sae_lens_ext_llc import estimate_llc  # noqa: E402
from test_llc import mse, two_layer_linear  # noqa: E402


def rank_two(seed: int):
    """The test's data-generating process with another seed."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(1000, 4, generator=generator)
    low_rank = torch.randn(4, 2, generator=generator) @ torch.randn(
        2, 4, generator=generator
    )
    noise = 0.5 * torch.randn(1000, 4, generator=generator)
    return inputs, inputs @ low_rank + noise


def estimate(data, seed: int) -> float:
    """The test's estimate on ``data`` with chain seed ``seed``."""
    net = two_layer_linear(data)
    result = estimate_llc(
        net,
        mse,
        data,
        num_draws=200,
        num_burnin=100,
        step_size=5e-4,
        seed=seed,
        check_curvature=False,
        progress=False,
    )
    return result.llc


def describe(label: str, values: list[float]) -> None:
    """Print a set of estimates with its mean, sd and range."""
    print(
        f"{label}: mean {statistics.mean(values):.2f}, sd {statistics.stdev(values):.2f}, "
        f"range {min(values):.2f}-{max(values):.2f} ({len(values)} runs)"
    )


def main() -> None:
    """Print the chain-seed and data-seed spread of the estimate."""
    chains = [estimate(rank_two(0), seed) for seed in range(10)]
    describe("chain seeds 0-9, data seed 0", chains)
    datas = [estimate(rank_two(seed), 0) for seed in range(1, 6)]
    describe("data seeds 1-5, chain seed 0", datas)


if __name__ == "__main__":
    main()
