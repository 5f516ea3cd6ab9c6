"""``calibrate_llc``: find SGLD settings whose estimate can be trusted, by itself.

Every (step size, nbeta) pair gets ``num_chains`` chains; all pairs' chains
advance together in one vectorised sampler, so a 3-step-size grid of 4 chains
costs one 12-chain run.  Each setting is judged by the diagnostics of
``estimate_llc``; a setting *qualifies* when no check raised an error or a
warning, which includes the two that make a recommendation trustworthy:

- stationarity: the loss and distance traces stopped trending through the
  draws (a chain still relaxing towards its stationary distribution gives an
  estimate that depends on the run length, e.g. far below d/2 at a tiny step);
- discretisation: the mean MALA acceptance probability of the SGLD steps is at
  least ``min_acceptance`` (the step size barely distorts the posterior).

The largest qualifying step size (fastest mixing) is recommended.  When none
qualifies, the grid widens by itself, round after round, within ``budget``
chain-steps (see :func:`next_round`): towards smaller step sizes when every
setting failed the discretisation check; otherwise towards larger step sizes
while none was too coarse, then towards longer chains between the largest
step size that passed and the smallest that failed.  Failures no step size can
cure (w* a saddle or not a critical point, a negative estimate) stop the
search with their explanation.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import Data
from .diagnostics import MIN_ACCEPTANCE
from .estimator import (
    LLCResult,
    Problem,
    check_sampler_options,
    default_nbeta,
    prepare_problem,
    settings_record,
    summarise_chains,
)
from .sampler import ChainSettings
from .threads import thread_limit

PLATEAU_TOLERANCE = 0.1
STEP_FACTOR = 4.0
BUDGET_ROUNDS = 8  # default budget: this many times the first round's cost
CURABLE = frozenset(
    {
        "not_stationary",
        "low_acceptance",
        "diverged",
        "not_converged",
        "burn_in",
        "near_zero",
        "exceeds_bound",
    }
)


@dataclass
class CalibrationResult:
    """The sweep's table, the per-setting results and the recommendation.

    ``table`` has one row per setting and round: ``round``, ``step_size``,
    ``nbeta``, ``num_burnin``, ``num_draws``, ``llc``, ``llc_se``, ``r_hat``,
    ``geweke_z``, ``acceptance`` (mean MALA acceptance of the draws),
    ``loss_drift`` and ``distance_drift`` (trend over the draws relative to
    the level), ``stationary``, ``flags`` (every finding's code), ``sound``
    (a positive estimate and no error or warning other than the MALA check),
    ``plateau`` (sound, and within 10% or 2 SE of the sound estimate at the
    next smaller step size with the same nbeta and run length: the estimate
    no longer depends on the step size) and ``healthy`` (sound, and the MALA
    acceptance reaches ``min_acceptance`` or the setting is on a plateau:
    the setting qualifies).  ``recommended`` is the chosen
    row as a dict, or None; ``reason`` says why, or why nothing qualified.
    ``spent`` is the chain-steps run, ``budget`` the limit.
    """

    table: pd.DataFrame
    results: list[LLCResult]
    recommended: dict[str, Any] | None
    reason: str
    localization: float = 1.0
    min_acceptance: float = MIN_ACCEPTANCE
    spent: int = 0
    budget: int = 0
    curvature: Any = field(default=None, repr=False)

    def plot(self):
        """LLC against step size per nbeta (a matplotlib Figure)."""
        from .plots import calibration_plot

        return calibration_plot(self)

    def estimate_options(self) -> dict[str, Any]:
        """``estimate_llc`` keyword arguments for the recommended setting.

        When the setting passed the discretisation check by a plateau rather
        than by its MALA acceptance, ``min_acceptance`` is 0 so the estimate
        does not repeat a check calibration already settled.  Raises
        ValueError, with the reason, when nothing was recommended.
        """
        if self.recommended is None:
            raise ValueError(f"calibrate_llc recommended no setting: {self.reason}")
        chosen = self.recommended
        return {
            "step_size": float(chosen["step_size"]),
            "nbeta": float(chosen["nbeta"]),
            "localization": self.localization,
            "num_burnin": int(chosen["num_burnin"]),
            "num_draws": int(chosen["num_draws"]),
            "min_acceptance": self.min_acceptance if chosen["acceptance_ok"] else 0.0,
        }


def mark_plateaus(table: pd.DataFrame) -> pd.Series:
    """Sound rows whose estimate agrees with the next smaller sound step size
    at the same nbeta and run length."""
    plateau = pd.Series(False, index=table.index)
    sound = table[table["sound"]]
    for _, rows in sound.groupby(["nbeta", "num_draws", "num_burnin"]):
        rows = rows.sort_values("step_size")
        for (_, smaller), (index, row) in itertools.pairwise(rows.iterrows()):
            gap = abs(row["llc"] - smaller["llc"])
            allowed = max(
                PLATEAU_TOLERANCE * abs(smaller["llc"]),
                2 * float(np.hypot(row["llc_se"], smaller["llc_se"])),
            )
            plateau[index] = gap <= allowed
    return plateau


def recommend(rows: pd.DataFrame, preferred_nbeta: float) -> tuple[int | None, str]:
    """Index of the recommended row among ``rows`` and why, or None.

    Among qualifying (``healthy``) rows: nbeta closest (in log) to
    ``preferred_nbeta``, then the largest step size (fastest mixing; the
    MALA check already bounds its discretisation error), then the shortest
    run.
    """
    healthy = rows[rows["healthy"]]
    if not len(healthy):
        return None, ""
    ranked = healthy.assign(
        _d=np.abs(np.log(healthy["nbeta"] / preferred_nbeta))
    ).sort_values(["_d", "step_size", "num_draws"], ascending=[True, False, True])
    index = int(ranked.index[0])
    row = rows.loc[index]
    if row["acceptance_ok"]:
        discretisation = (
            f"its MALA acceptance {row['acceptance']:.2f} passes the "
            "discretisation check"
        )
    else:
        discretisation = (
            f"its estimate agrees with the next smaller step size's (a plateau: "
            f"the discretisation no longer matters), though its MALA acceptance "
            f"is {row['acceptance']:.2f}, as is usual in high dimension or for a "
            "loss with jumps (TopK)"
        )
    return index, (
        f"step size {row['step_size']:g} at nbeta {row['nbeta']:.4g} with "
        f"{int(row['num_burnin'])} burn-in + {int(row['num_draws'])} draws: its "
        f"loss and distance traces are stationary, {discretisation}, and every "
        "other check passes; the largest step size that does (fastest mixing)"
    )


def next_round(rows: pd.DataFrame) -> tuple[list[float], bool] | None:
    """The step sizes of the next round and whether its chains are twice as long.

    A setting is *too coarse* when it diverged, exceeded d/2, or passed
    neither discretisation check (MALA acceptance, plateau).  If every
    setting was, the next round tries a step size ``STEP_FACTOR`` times below
    the smallest, next to the smallest (a pair that can form a plateau).
    Otherwise the largest step
    size that was fine runs again with a larger one: ``STEP_FACTOR`` times
    it, at the same run length, when no larger step size was tried (larger
    steps mix faster); else halfway (in log) to the smallest too-coarse step
    size above it, with chains twice as long.  None when some failure
    is one no step size or run length cures.
    """
    for flags in rows["blocking"]:
        if not set(filter(None, flags.split(","))) <= CURABLE:
            return None
    too_coarse = rows["blocking"].str.contains("diverged|exceeds_bound") | (
        ~rows["acceptance_ok"] & ~rows["plateau"]
    )
    if too_coarse.all():  # keep the smallest: a pair can form a plateau
        smallest = float(rows["step_size"].min())
        return [smallest / STEP_FACTOR, smallest], False
    fine = float(rows.loc[~too_coarse, "step_size"].max())
    coarser = rows.loc[too_coarse & (rows["step_size"] > fine), "step_size"]
    if len(coarser):  # the step size is near its limit: run longer
        return [fine, float(np.sqrt(fine * coarser.min()))], True
    return [fine, fine * STEP_FACTOR], False  # room to grow: larger steps first


def run_round(
    problem: Problem,
    grid: list[tuple[float, float]],
    *,
    num_chains: int,
    num_burnin: int,
    num_draws: int,
    localization: float,
    seed: int,
    progress: bool,
    min_acceptance: float = MIN_ACCEPTANCE,
) -> tuple[list[LLCResult], list[dict[str, Any]]]:
    """Every setting of ``grid`` as one batch of chains; results and table rows."""
    started = time.perf_counter()

    def per_chain(values):
        return torch.tensor(values, dtype=torch.float64).repeat_interleave(num_chains)

    settings = ChainSettings(
        step_size=per_chain([s for s, _ in grid]),
        nbeta=per_chain([b for _, b in grid]),
        localization=torch.full((len(grid) * num_chains,), float(localization)),
    )
    traces = problem.sample(
        settings, num_burnin + num_draws, seed, progress, track_acceptance=True
    )
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
            min_acceptance=min_acceptance,
        )
        results.append(result)
        diag = result.diagnostics
        blocking = [
            f.code
            for f in diag.findings
            if f.severity in ("error", "warning") and f.code != "low_acceptance"
        ]
        rows.append(
            {
                "step_size": step_size,
                "nbeta": nbeta,
                "num_burnin": num_burnin,
                "num_draws": num_draws,
                "llc": result.llc,
                "llc_se": result.llc_se,
                "r_hat": diag.r_hat,
                "geweke_z": diag.geweke_z,
                "acceptance": diag.acceptance,
                "loss_drift": diag.loss_drift,
                "distance_drift": diag.distance_drift,
                "stationary": diag.stationary,
                "diverged_chains": len(diag.diverged_chains),
                "flags": ",".join(diag.flags),
                "blocking": ",".join(blocking),
                "sound": not blocking and np.isfinite(result.llc) and result.llc > 0,
                "acceptance_ok": diag.acceptance is not None
                and diag.acceptance >= min_acceptance,
            }
        )
    return results, rows


def calibrate_llc(
    model: nn.Module,
    loss_fn: Callable,
    data: Data,
    *,
    step_sizes: Sequence[float] = (1e-5, 1e-4, 1e-3),
    nbetas: Sequence[float] | None = None,
    localization: float = 1.0,
    num_chains: int = 4,
    num_draws: int = 200,
    num_burnin: int = 50,
    batch_size: int | None = None,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    budget: int | None = None,
    min_acceptance: float = MIN_ACCEPTANCE,
    check_curvature: bool = True,
    threads: int | None = None,
    progress: bool = True,
) -> CalibrationResult:
    """Estimate the LLC at every (step size, nbeta), widen the grid until a
    setting qualifies, and recommend one.

    ``nbetas`` defaults to the default nbeta alone (m / log m for minibatch
    size m): the LLC at another nbeta is another quantity.  ``budget`` caps
    the total chain-steps (chains x steps, summed over rounds; None: 8 times
    the first round's, counting a grid of fewer than 3 settings as 3).  ``min_acceptance`` is the MALA acceptance a setting
    needs.  The other arguments mean what they mean for ``estimate_llc``.
    Returns a ``CalibrationResult``; ``estimate_llc(model, loss_fn, data,
    **result.estimate_options())`` estimates at the recommendation.
    """
    step_sizes = sorted({float(s) for s in step_sizes})
    if not step_sizes:
        raise ValueError("step_sizes is empty; pass at least one step size")
    if not 0 <= min_acceptance <= 1:
        raise ValueError(f"min_acceptance must be in [0, 1], got {min_acceptance}")
    problem = prepare_problem(model, loss_fn, data, batch_size, autocast_dtype)
    base_nbeta = default_nbeta(problem.batch_size)
    nbetas = [base_nbeta] if nbetas is None else [float(b) for b in nbetas]
    if not nbetas:
        raise ValueError("nbetas is empty; pass at least one nbeta or None")
    check_sampler_options(
        num_chains, num_draws, num_burnin, step_sizes, nbetas, localization
    )
    first_cost = len(step_sizes) * len(nbetas) * num_chains * (num_burnin + num_draws)
    settings_floor = max(3, len(step_sizes) * len(nbetas))
    default_budget = (
        BUDGET_ROUNDS * settings_floor * num_chains * (num_burnin + num_draws)
    )
    budget = default_budget if budget is None else int(budget)
    if budget < first_cost:
        raise ValueError(
            f"budget {budget} chain-steps is below the first round's "
            f"{first_cost} (settings x chains x steps); raise budget or shrink "
            "the grid"
        )
    results, rows, spent = [], [], 0
    chosen, reason = None, ""
    with thread_limit(problem.threads(threads)):
        if check_curvature:
            problem.check_curvature(seed)
        for round_index in itertools.count():
            grid = list(itertools.product(step_sizes, nbetas))
            round_results, round_rows = run_round(
                problem,
                grid,
                num_chains=num_chains,
                num_burnin=num_burnin,
                num_draws=num_draws,
                localization=localization,
                seed=seed + round_index,
                progress=progress,
                min_acceptance=min_acceptance,
            )
            spent += len(grid) * num_chains * (num_burnin + num_draws)
            start = len(rows)
            results += round_results
            rows += [{"round": round_index, **row} for row in round_rows]
            table = judge(pd.DataFrame(rows))
            chosen, reason = recommend(table.iloc[start:], base_nbeta)
            if chosen is not None:
                break
            widened = next_round(table.iloc[start:])
            if widened is None:
                reason = incurable_reason(round_results)
                break
            step_sizes, longer = widened
            if longer:
                num_burnin, num_draws = 2 * num_burnin, 2 * num_draws
            cost = len(step_sizes) * len(nbetas) * num_chains
            if spent + cost * (num_burnin + num_draws) > budget:
                reason = budget_reason(table.iloc[start:], spent, budget)
                break
    recommended = None if chosen is None else table.loc[chosen].to_dict()
    return CalibrationResult(
        table=table,
        results=results,
        recommended=recommended,
        reason=reason,
        localization=float(localization),
        min_acceptance=min_acceptance,
        spent=spent,
        budget=budget,
        curvature=problem.curvature,
    )


def judge(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``plateau`` and ``healthy`` (the setting qualifies)."""
    table["plateau"] = mark_plateaus(table)
    table["healthy"] = table["sound"] & (table["acceptance_ok"] | table["plateau"])
    return table


def incurable_reason(results: list[LLCResult]) -> str:
    """Why no setting qualifies when no step size or run length can help."""
    messages = []
    for result in results:
        for message in result.diagnostics.messages():
            code = message.split(":")[0].split("] ")[-1]
            if code not in CURABLE and message not in messages:
                messages.append(message)
    return (
        "no setting qualifies, and no step size or run length can fix it: "
        + " ".join(messages[:2])
    )


def budget_reason(rows: pd.DataFrame, spent: int, budget: int) -> str:
    """Why the search stopped at the budget, with each last setting's failures."""
    failures = "; ".join(
        f"step size {row.step_size:g}: "
        + (row.flags if row.flags else "estimate not positive")
        for row in rows.itertuples()
    )
    return (
        f"no setting qualified within the budget of {budget:,} chain-steps "
        f"({spent:,} spent; the next round would exceed it). Last round: "
        f"{failures}. Raise budget, or start from other step_sizes."
    )
