"""``calibrate_llc``: a sweep over step size and nbeta, run as one batch of chains.

Every (step size, nbeta) pair gets ``num_chains`` chains; all pairs' chains
advance together in one vectorised sampler, so a 3 x 3 grid of 2 chains costs
one 18-chain run.  Each setting is then judged by the same diagnostics as
``estimate_llc``, and one setting is recommended.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import Data
from .estimator import (
    LLCResult,
    check_sampler_options,
    default_nbeta,
    prepare_problem,
    settings_record,
    summarise_chains,
)
from .sampler import ChainSettings

PLATEAU_TOLERANCE = 0.15


@dataclass
class CalibrationResult:
    """The sweep's table, the per-setting results and the recommendation.

    ``table`` has one row per setting: ``step_size``, ``nbeta``, ``llc``,
    ``llc_se``, ``r_hat``, ``geweke_z``, ``flags``, ``healthy`` (no error or
    warning) and ``plateau`` (healthy, and within 15% or 2 SE of the healthy
    estimate at the next smaller step size with the same nbeta: the estimate
    no longer depends on the step size there).  ``recommended`` is that
    table's chosen row as a dict, or None when no setting is healthy.
    """

    table: pd.DataFrame
    results: list[LLCResult]
    recommended: dict[str, Any] | None
    reason: str

    def plot(self):
        """LLC against step size per nbeta (a matplotlib Figure)."""
        from .plots import calibration_plot

        return calibration_plot(self)


def mark_plateaus(table: pd.DataFrame) -> pd.Series:
    """Healthy rows whose estimate agrees with the next smaller healthy step size."""
    plateau = pd.Series(False, index=table.index)
    for _, rows in table[table["healthy"]].groupby("nbeta"):
        rows = rows.sort_values("step_size")
        for (_, smaller), (index, row) in itertools.pairwise(rows.iterrows()):
            gap = abs(row["llc"] - smaller["llc"])
            allowed = max(
                PLATEAU_TOLERANCE * abs(smaller["llc"]),
                2 * float(np.hypot(row["llc_se"], smaller["llc_se"])),
            )
            plateau[index] = gap <= allowed
    return plateau


def recommend(table: pd.DataFrame, preferred_nbeta: float) -> tuple[int | None, str]:
    """Index of the recommended row and why.

    On a plateau, the largest step size (fastest mixing) wins; nbeta closest
    (in log) to ``preferred_nbeta`` breaks ties.  Without a plateau, the
    healthy setting with the lowest R-hat; without a healthy one, none.
    """

    def nbeta_distance(rows):
        return np.abs(np.log(rows["nbeta"] / preferred_nbeta))

    on_plateau = table[table["plateau"]]
    if len(on_plateau):
        ranked = on_plateau.assign(_d=nbeta_distance(on_plateau)).sort_values(
            ["_d", "step_size"], ascending=[True, False]
        )
        return int(ranked.index[0]), (
            "largest step size whose estimate agrees with the next smaller step "
            "size (a plateau) and passes every check"
        )
    healthy = table[table["healthy"]]
    if len(healthy):
        return int(healthy["r_hat"].fillna(np.inf).idxmin()), (
            "passes every check, but no two step sizes agree: widen the grid "
            "towards smaller step sizes and confirm"
        )
    return None, (
        "no setting passed the checks: lower the step sizes, raise "
        "localization, or run more draws"
    )


def calibrate_llc(
    model: nn.Module,
    loss_fn: Callable,
    data: Data,
    *,
    step_sizes: Sequence[float] = (1e-5, 1e-4, 1e-3),
    nbetas: Sequence[float] | None = None,
    localization: float = 1.0,
    num_chains: int = 2,
    num_draws: int = 200,
    num_burnin: int = 50,
    batch_size: int | None = None,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> CalibrationResult:
    """Estimate the LLC at every (step size, nbeta) and recommend a setting.

    ``nbetas`` defaults to the default nbeta (m / log m) times 0.3, 1 and 3.
    The other arguments mean what they mean for ``estimate_llc``.  Returns a
    ``CalibrationResult``; pass its ``recommended["step_size"]`` and
    ``["nbeta"]`` to ``estimate_llc``.
    """
    step_sizes = [float(s) for s in step_sizes]
    if not step_sizes:
        raise ValueError("step_sizes is empty; pass at least one step size")
    started = time.perf_counter()
    problem = prepare_problem(model, loss_fn, data, batch_size, autocast_dtype)
    base_nbeta = default_nbeta(problem.batch_size)
    nbetas = [base_nbeta * f for f in (0.3, 1.0, 3.0)] if nbetas is None else nbetas
    nbetas = [float(b) for b in nbetas]
    if not nbetas:
        raise ValueError("nbetas is empty; pass at least one nbeta or None")
    check_sampler_options(
        num_chains, num_draws, num_burnin, step_sizes, nbetas, localization
    )
    grid = list(itertools.product(step_sizes, nbetas))

    def per_chain(values):
        return torch.tensor(values, dtype=torch.float64).repeat_interleave(num_chains)

    settings = ChainSettings(
        step_size=per_chain([s for s, _ in grid]),
        nbeta=per_chain([b for _, b in grid]),
        localization=torch.full((len(grid) * num_chains,), float(localization)),
    )
    traces = problem.sample(settings, num_burnin + num_draws, seed, progress)
    seconds = time.perf_counter() - started
    results, rows = [], []
    for i, (step_size, nbeta) in enumerate(grid):
        result = summarise_chains(
            problem,
            traces,
            slice(i * num_chains, (i + 1) * num_chains),
            settings=settings_record(
                problem,
                num_chains=num_chains,
                num_draws=num_draws,
                num_burnin=num_burnin,
                step_size=step_size,
                nbeta=nbeta,
                localization=float(localization),
                seed=seed,
            ),
            seconds=seconds,
        )
        results.append(result)
        diag = result.diagnostics
        rows.append(
            {
                "step_size": step_size,
                "nbeta": nbeta,
                "llc": result.llc,
                "llc_se": result.llc_se,
                "r_hat": diag.r_hat,
                "geweke_z": diag.geweke_z,
                "diverged_chains": len(diag.diverged_chains),
                "flags": ",".join(diag.flags),
                "healthy": diag.ok and np.isfinite(result.llc) and result.llc > 0,
            }
        )
    table = pd.DataFrame(rows)
    table["plateau"] = mark_plateaus(table)
    chosen, reason = recommend(table, base_nbeta)
    recommended = None if chosen is None else table.loc[chosen].to_dict()
    return CalibrationResult(
        table=table, results=results, recommended=recommended, reason=reason
    )
