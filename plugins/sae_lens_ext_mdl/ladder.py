"""The precision ladder: placed from the activations' own scale, and the choice on it.

A ladder is ``scale * 2**j`` for consecutive integer octaves ``j``.  With no
absolute precision given, ``scale`` is the power of two nearest the RMS of
the first batch's non-zero activations, and a pilot on that batch bisects
over octaves for the coarsest one whose loss increase stays within the
tolerance; the ladder is then laid around that octave (``finer_octaves``
below it, ``coarser_octaves`` above).  Multiplying every activation by ``c``
multiplies the ladder by ``c`` (up to the power-of-two rounding of the
scale): the search does not depend on the activations' units.

The choice on a measured ladder is the coarsest precision such that it and
every finer precision pass (:func:`coarsest_passing`); with per-batch losses,
a bootstrap over batches says how stable that choice is
(:func:`bootstrap_choices`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Octaves relative to the scale that the pilot bisection may reach.
PILOT_LOWEST, PILOT_HIGHEST = -24, 12
BOOTSTRAP_SAMPLES = 200


def activation_scale(values: torch.Tensor) -> float:
    """The power of two nearest the RMS of the non-zero ``values`` (1.0 if none)."""
    if values.numel() == 0:
        return 1.0
    rms = values.double().pow(2).mean().sqrt().item()
    if not rms > 0 or not math.isfinite(rms):
        return 1.0
    return 2.0 ** round(math.log2(rms))


def pilot_octave(passes: Callable[[int], bool]) -> int:
    """The coarsest octave ``j`` in the pilot range with ``passes(j)``, by bisection.

    Assumes the loss increase grows with the precision (the real ladder
    checks it).  When even the coarsest octave passes it is returned, and
    when not even the finest does, the finest: the ladder is then placed at
    that end of the pilot range and the choice on it warns.
    """
    if passes(PILOT_HIGHEST):
        return PILOT_HIGHEST
    if not passes(PILOT_LOWEST):
        return PILOT_LOWEST
    low, high = PILOT_LOWEST, PILOT_HIGHEST  # passes(low), not passes(high)
    while high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            low = middle
        else:
            high = middle
    return low


@dataclass
class Ladder:
    """Precisions ``finest * 2**j``, ``j < n``, and how they were placed."""

    finest: float
    n: int
    placement: str  # "absolute", "fixed", or "scale" (from the activations)
    scale: float | None = None
    pilot_precision: float | None = None

    @property
    def precisions(self) -> list[float]:
        """The ladder, finest first."""
        return [self.finest * 2**j for j in range(self.n)]


def choice_on_ladder(passed: list[bool]) -> tuple[int, bool]:
    """Index of the coarsest rung whose every finer rung also passes.

    Returns ``(index, met)``; when even the finest rung fails, ``(0, False)``.
    A rung that passes above a failing one is not chosen: its pass is
    noise or non-monotonic behaviour, not a tolerated precision.
    """
    prefix = 0
    for ok in passed:
        if not ok:
            break
        prefix += 1
    return (prefix - 1, True) if prefix else (0, False)


def ladder_end_warning(index: int, met: bool, n: int, what: str) -> str | None:
    """A sentence when the choice sits at an end of the ladder, else None."""
    if not met:
        return (
            f"no precision of the ladder met the {what} tolerance (the finest "
            "failed): the description length is at the finest precision tried; "
            "raise mdl.tolerance or mdl.n_precisions"
        )
    if n == 1:
        return None
    if index == n - 1:
        return (
            f"the coarsest precision of the ladder still meets the {what} "
            "tolerance: a coarser precision may too, so the description length "
            "may be overstated; raise mdl.n_precisions (or mdl.coarser_octaves)"
        )
    if index == 0:
        return (
            f"only the finest precision of the ladder meets the {what} tolerance: "
            "the choice sits at the ladder's end; raise mdl.n_precisions (or "
            "mdl.finer_octaves) to see finer precisions"
        )
    return None


def bootstrap_choices(
    increases: torch.Tensor, weights: torch.Tensor, tolerance: float, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rung and loss increases per bootstrap resample of batches.

    ``increases`` is ``[batches, rungs]``, each batch's summed loss increase
    at each rung, and ``weights`` ``[batches]`` what it is divided by (the
    batch's unquantised squared error for a relative MSE, 1 for a mean CE).
    Resampling batches with replacement gives the spread of the choice that
    the finite number of batches leaves.  Returns ``(choices [samples],
    increases [samples, rungs])``.
    """
    n_batches = increases.shape[0]
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(
        0, n_batches, (BOOTSTRAP_SAMPLES, n_batches), generator=generator
    )
    resampled = increases.double()[picks].sum(1) / weights.double()[picks].sum(
        1, keepdim=True
    ).clamp_min(1e-300)
    passed = resampled <= tolerance
    prefix = passed.long().cumprod(1).sum(1)  # leading passes
    return (prefix - 1).clamp_min(0), resampled
