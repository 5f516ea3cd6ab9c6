"""Figures for LLC estimates: chain traces and the calibration sweep."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from .calibration import CalibrationResult
    from .estimator import LLCResult


def _running_mean(values: np.ndarray) -> np.ndarray:
    return np.cumsum(values) / np.arange(1, values.shape[0] + 1)


def trace_plot(result: LLCResult) -> Figure:
    """Per-chain nbeta*(L(w)-L(w*)) with running means, and |w - w*|.

    The shaded band is the burn-in; the dashed line the estimate; a dotted
    line marks d/2 when it is in view.  Healthy chains should rise from 0,
    settle, and overlap; the distance panel shows how far the localising
    prior lets them go.
    """
    fig = Figure(figsize=(8, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    draw_traces(result, top, bottom)
    fig.tight_layout()
    return fig


def side_by_side_plot(results: dict[str, LLCResult]) -> Figure:
    """The traces of several estimates in columns, titled by ``results``' keys
    (e.g. a setting ``calibrate_llc`` recommended next to one it rejected)."""
    fig = Figure(figsize=(5.5 * len(results), 5.5))
    axes = fig.subplots(2, len(results), sharex="col", squeeze=False)
    for column, (title, result) in enumerate(results.items()):
        top, bottom = axes[0, column], axes[1, column]
        draw_traces(result, top, bottom)
        top.set_title(f"{title}\n{top.get_title()}", fontsize=9)
    fig.tight_layout()
    return fig


def draw_traces(result: LLCResult, top, bottom) -> None:
    """Draw ``result``'s LLC traces on ``top`` and distances on ``bottom``."""
    burnin = result.settings["num_burnin"]
    for chain, rows in result.trace.groupby("chain"):
        color = f"C{chain % 10}"
        steps = rows["step"].to_numpy()
        values = rows["llc"].to_numpy()
        top.plot(steps, values, color=color, alpha=0.25, linewidth=0.7)
        draws = steps >= burnin
        if draws.any():
            top.plot(
                steps[draws],
                _running_mean(values[draws]),
                color=color,
                linewidth=1.6,
                label=f"chain {chain}",
            )
        bottom.plot(steps, rows["distance"].to_numpy(), color=color, linewidth=1)
    for ax in (top, bottom):
        if burnin:
            ax.axvspan(0, burnin, color="grey", alpha=0.15, linewidth=0)
    if np.isfinite(result.llc):
        top.axhline(result.llc, color="black", linestyle="--", linewidth=1)
    top.axhline(0, color="grey", linewidth=0.8)
    ymax = np.nanmax(result.trace["llc"].to_numpy()) if len(result.trace) else 0
    if np.isfinite(ymax) and result.n_params / 2 <= 1.5 * ymax:
        top.axhline(result.n_params / 2, color="#c0504d", linestyle=":", label="d/2")
    top.set_ylabel("nβ (L(w) − L(w*))")
    top.set_title(
        f"LLC {result.llc:.4g} ± {result.llc_se:.2g}, "
        f"R-hat {result.diagnostics.r_hat:.3f} "
        f"({'ok' if result.diagnostics.ok else ', '.join(result.diagnostics.flags)})"
    )
    top.legend(fontsize=7, ncol=4, loc="lower right")
    bottom.set_ylabel("|w − w*|")
    bottom.set_xlabel("SGLD step (shaded: burn-in; bold: running mean of draws)")


def calibration_plot(calibration: CalibrationResult) -> Figure:
    """LLC against step size, one line per nbeta and run length (one per
    calibration round); settings that did not qualify hollow."""
    table = calibration.table
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    groups = table.groupby(["nbeta", "num_burnin", "num_draws"])
    for i, ((nbeta, burnin, draws), rows) in enumerate(groups):
        color = f"C{i % 10}"
        rows = rows.sort_values("step_size")
        ax.errorbar(
            rows["step_size"],
            rows["llc"],
            yerr=rows["llc_se"],
            color=color,
            marker="none",
            capsize=3,
            label=f"nβ = {nbeta:.4g}, {burnin} + {draws} steps",
        )
        healthy = rows["healthy"].to_numpy(dtype=bool)
        ax.scatter(
            rows["step_size"][healthy], rows["llc"][healthy], color=color, zorder=3
        )
        ax.scatter(
            rows["step_size"][~healthy],
            rows["llc"][~healthy],
            facecolors="none",
            edgecolors=color,
            zorder=3,
        )
    chosen = calibration.recommended
    if chosen is not None:
        ax.scatter(
            [chosen["step_size"]],
            [chosen["llc"]],
            s=180,
            facecolors="none",
            edgecolors="black",
            label="recommended",
            zorder=4,
        )
    ax.set_xscale("log")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("step size ε")
    ax.set_ylabel("LLC estimate")
    ax.set_title("Calibration (hollow: did not qualify)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
