"""Shared timing for the benchmarks: the sides take turns, medians with the spread.

A shared machine's load drifts during a benchmark, so timing one side after
the other biases the ratio towards whichever side ran in the quieter
minutes.  :func:`alternate` runs the sides in turn (ours, peer, ours,
peer, ...) for a number of rounds; :class:`Spread` holds one side's samples
and reports their median with the min-max range; :func:`paired_ratio` takes
the ratio round by round (each round's two runs saw about the same load).
:func:`write_json` saves the result in the form ``scripts/refresh_docs.py``
reads.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Spread:
    """Repeated measurements of one quantity: median, range and quartiles."""

    samples: tuple[float, ...]

    def __post_init__(self):
        if not self.samples:
            raise ValueError("a Spread needs at least one sample")

    @property
    def median(self) -> float:
        """The median sample."""
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        """The smallest sample."""
        return min(self.samples)

    @property
    def high(self) -> float:
        """The largest sample."""
        return max(self.samples)

    def quartiles(self) -> tuple[float, float]:
        """First and third quartiles (both the median for fewer than 2 samples)."""
        if len(self.samples) < 2:
            return self.median, self.median
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    def text(self, unit: str = " s", digits: int = 2) -> str:
        """``median unit (min-max, n runs)``, e.g. ``1.23 s (1.20-1.31, 3 runs)``."""
        if len(self.samples) == 1:
            return f"{self.median:.{digits}f}{unit} (1 run)"
        return (
            f"{self.median:.{digits}f}{unit} ({self.low:.{digits}f}-"
            f"{self.high:.{digits}f}, {len(self.samples)} runs)"
        )

    def as_dict(self) -> dict:
        """JSON-ready: median, min, max, quartiles and every sample."""
        q1, q3 = self.quartiles()
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "q1": q1,
            "q3": q3,
            "samples": list(self.samples),
        }


def alternate(
    sides: dict[str, Callable[[], float]], rounds: int, warmup: int = 0
) -> dict[str, Spread]:
    """Run every side once per round, in turn, and collect each side's seconds.

    Each callable runs its side once and returns the seconds to count (so a
    side can exclude its own setup).  ``warmup`` rounds run first and are
    not counted.  Returns one :class:`Spread` per side, in the given order.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(warmup + rounds):
        for name, side in sides.items():
            seconds = side()
            if round_index >= warmup:
                samples[name].append(float(seconds))
    return {name: Spread(tuple(values)) for name, values in samples.items()}


def paired_ratio(numerator: Spread, denominator: Spread) -> Spread:
    """Round-by-round ratios of two alternated sides (e.g. peer / ours)."""
    if len(numerator.samples) != len(denominator.samples):
        raise ValueError("paired_ratio needs the same number of rounds on both sides")
    return Spread(
        tuple(
            a / b for a, b in zip(numerator.samples, denominator.samples, strict=True)
        )
    )


def print_comparison(times: dict[str, Spread], ours: str, peer: str) -> Spread:
    """Print each side's median (range) and the paired speed-up; return it."""
    for name, spread in times.items():
        print(f"{name:>36}: {spread.text()}")
    speedup = paired_ratio(times[peer], times[ours])
    print(f"speed-up {peer} / {ours}: {speedup.text(unit='x')}")
    return speedup


def write_json(path: Path | None, record: dict) -> None:
    """Write ``record`` (Spreads become dicts) to ``path`` as JSON, if given."""
    if path is None:
        return

    def plain(value):
        if isinstance(value, Spread):
            return value.as_dict()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    Path(path).write_text(json.dumps(plain(record), indent=2) + "\n")
