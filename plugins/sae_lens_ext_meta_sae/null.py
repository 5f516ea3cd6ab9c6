"""The null baseline of a meta-SAE: the same trainer on a random decoder.

A meta-SAE's fraction of variance explained (FVE) means little alone: with
``d_meta`` meta-latents and ``k`` active per row, a BatchTopK SAE explains a
fair share of *any* set of unit vectors in ``d_in`` dimensions.  The null
trains the same meta-SAE (same ``d_meta``, ``k``, steps, batch size,
learning rate and sampling) on as many unit-norm Gaussian rows in the same
dimension, for several seeds, and measures its FVE the same way.

The decomposition is *distinguishable from chance* when

    FVE - mean(null) > max(3 * sd(null) * sqrt(1 + 1/K), margin)

with ``K`` null seeds: the real FVE is one draw of the same training noise
as each null (hence ``sqrt(1 + 1/K)``), and ``margin`` (``null_margin``,
default 0.01) keeps a tiny spread from making a negligible gap significant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .config import MetaSAEConfig
from .trainer import MetaSAETrainer

#: Seeds of the null decoders start here, away from the training seeds.
NULL_SEED_OFFSET = 1_000_003
#: The null trainers' seeds: the real training seed plus multiples of this.
TRAIN_SEED_STEP = 7_919


@dataclass
class NullBaseline:
    """FVE of the same meta-SAE trainer on random unit-norm decoders."""

    fves: list[float]
    margin: float

    @property
    def mean(self) -> float:
        """Mean null FVE over seeds."""
        return sum(self.fves) / len(self.fves)

    @property
    def std(self) -> float:
        """Sample standard deviation of the null FVE (0 with one seed)."""
        if len(self.fves) < 2:
            return 0.0
        mean = self.mean
        return math.sqrt(sum((f - mean) ** 2 for f in self.fves) / (len(self.fves) - 1))

    def threshold(self) -> float:
        """How far above the null mean an FVE must lie to count as structure."""
        spread = 3 * self.std * math.sqrt(1 + 1 / len(self.fves))
        return max(spread, self.margin)

    def metrics(self, fve: float) -> dict:
        """Null mean and spread, FVE above null, and the chance flag."""
        above = fve - self.mean
        return {
            "null_fve": self.mean,
            "null_fve_std": self.std,
            "null_seeds": len(self.fves),
            "fve_above_null": above,
            "null_threshold": self.threshold(),
            "distinguishable_from_null": bool(above > self.threshold()),
        }


def random_unit_rows(n: int, d_in: int, seed: int) -> torch.Tensor:
    """``n`` Gaussian rows in ``d_in`` dimensions, normalised to unit length."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, d_in, generator=generator)
    return rows / rows.norm(dim=1, keepdim=True)


def null_baseline(
    n_rows: int,
    d_in: int,
    config: MetaSAEConfig,
    fve_of,
    *,
    seeds: int = 3,
    margin: float = 0.01,
    row_weights: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> NullBaseline:
    """Train the meta-SAE of ``config`` on ``seeds`` random decoders.

    ``fve_of(weights, rows)`` measures the FVE exactly as for the real
    decoder; ``row_weights`` (the real rows' sampling weights) are given to
    the random rows in the same order, so frequency-weighted sampling is
    matched too.  The meta-SAEs train on ``device`` (the real one's); the
    random rows are drawn on the CPU, so every device trains on the same rows.
    """
    if seeds < 1:
        raise ValueError(f"null_seeds must be at least 1, got {seeds}")
    d_meta = config.meta_width(n_rows)
    fves = []
    for index in range(seeds):
        rows = random_unit_rows(n_rows, d_in, NULL_SEED_OFFSET + index)
        # the trainer's generator must not replay the data's: with equal seeds
        # its random initial decoder would be the first data rows
        train_seed = int(config.seed or 0) + TRAIN_SEED_STEP * (index + 1)
        null_config = dataclasses.replace(config, seed=train_seed, d_meta=d_meta)
        trainer = MetaSAETrainer(
            rows.to(device), d_meta, null_config, row_weights=row_weights
        )
        weights = trainer.fit(progress=False)
        fves.append(float(fve_of(weights, rows)))
    return NullBaseline(fves, margin)
