"""Tokenized vs plain SAE: same width, k, steps, data order and initial weights."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .evaluation import ce_metrics
from .training import TrainedSAE, TrainingOptions, train_tokenized_sae


@dataclass
class Comparison:
    """Both arms, their final metrics and the steps-to-target-MSE ratio.

    ``target_mse`` is the baseline's final held-out MSE; ``steps_to_target``
    gives, per arm, the first evaluated step at or below it (None if never);
    ``speedup`` is baseline steps / tokenized steps (see :func:`speedup_of`).
    """

    arms: dict[str, TrainedSAE]
    table: pd.DataFrame
    target_mse: float
    steps_to_target: dict[str, int | None]
    speedup: float | None
    figure: Figure


def compare_with_baseline(
    model,
    hook_name: str,
    dataset,
    options: TrainingOptions | None = None,
    *,
    variants: dict[str, dict] | None = None,
    ce_sequences: int = 64,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> Comparison:
    """Train SAE-Lens's plain SAE and tokenized ones, and compare them.

    ``variants`` maps an arm name to :class:`TrainingOptions` overrides of the
    tokenized arms (default: one arm, ``"tokenized"``, with ``options``).
    The first tokenized arm gives the headline ``speedup``.  CE losses are
    measured on up to ``ce_sequences`` held-out sequences.  With ``out_dir``
    each arm's SAE is saved in its own SAE-Lens folder.
    """
    options = options or TrainingOptions()
    variants = variants or {"tokenized": {}}
    arms: dict[str, TrainedSAE] = {}
    rows = []
    for name, overrides in {"baseline": {"tokenized": False}, **variants}.items():
        arm_options = dataclasses.replace(options, **overrides)
        started = time.perf_counter()
        arm = train_tokenized_sae(
            model,
            hook_name,
            dataset,
            arm_options,
            out_dir=Path(out_dir) / name if out_dir else None,
            progress=progress,
        )
        seconds = time.perf_counter() - started
        ce = ce_metrics(model, hook_name, arm.sae, arm.eval_tokens[:ce_sequences])
        arms[name] = arm
        rows.append({"arm": name, **arm.metrics, **ce, "train_seconds": seconds})
    table = pd.DataFrame(rows)
    target = arms["baseline"].metrics["mse"]
    reached = {name: steps_to_target(arm.curve, target) for name, arm in arms.items()}
    table["steps_to_baseline_mse"] = [reached[name] for name in table.arm]
    first = next(iter(variants))
    speedup = speedup_of(reached["baseline"], reached[first])
    figure = learning_curve_plot({n: a.curve for n, a in arms.items()}, target)
    return Comparison(arms, table, target, reached, speedup, figure)


def speedup_of(baseline_steps: int | None, steps: int | None) -> float | None:
    """Baseline steps / tokenized steps; inf if reached at initialisation, None
    if either arm never reached the target."""
    if baseline_steps is None or steps is None:
        return None
    return baseline_steps / steps if steps else float("inf")


def steps_to_target(curve: pd.DataFrame, target: float) -> int | None:
    """First evaluated step whose held-out MSE is at or below ``target``."""
    hit = curve[curve.mse <= target * (1 + 1e-9)]
    return int(hit.step.iloc[0]) if len(hit) else None


def learning_curve_plot(curves: dict[str, pd.DataFrame], target: float) -> Figure:
    """Held-out MSE and explained variance against training steps."""
    fig = Figure(figsize=(9, 3.6))
    mse_ax, ev_ax = fig.subplots(1, 2)
    for name, curve in curves.items():
        shown = curve[curve.step > 0]
        mse_ax.plot(shown.step, shown.mse, "o-", markersize=3, label=name)
        ev_ax.plot(shown.step, shown.explained_variance, "o-", markersize=3, label=name)
    mse_ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    mse_ax.set_yscale("log")
    mse_ax.set_xlabel("training step")
    mse_ax.set_ylabel("held-out MSE (per element)")
    mse_ax.set_title("dashed: baseline's final MSE")
    ev_ax.set_xlabel("training step")
    ev_ax.set_ylabel("held-out explained variance")
    ev_ax.legend()
    fig.tight_layout()
    return fig
