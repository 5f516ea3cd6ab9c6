"""Write a training run or a comparison to a folder and summarise it as text."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .comparison import Comparison, compare_with_baseline
from .evaluation import ce_metrics
from .training import TrainingOptions, train_tokenized_sae

SUMMARY_COLUMNS = [
    "arm",
    "mse",
    "explained_variance",
    "l0",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_recovered",
    "steps_to_baseline_mse",
    "train_seconds",
]


def write_single(model, hook_name, tokens, options: TrainingOptions, out: Path) -> str:
    """Train one tokenized SAE into ``out/sae``; write its learning curve."""
    out = Path(out)
    run = train_tokenized_sae(model, hook_name, tokens, options, out_dir=out / "sae")
    run.curve.to_csv(out / "curve.csv", index=False)
    ce = ce_metrics(model, hook_name, run.sae, run.eval_tokens[:64])
    metrics = {**run.metrics, **ce}
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    return f"Saved {out / 'sae'} (SAE-Lens format). Held-out: {shown}"


def write_comparison(
    model, hook_name, tokens, options: TrainingOptions, out: Path, variants=None
) -> str:
    """Train baseline and tokenized arms into ``out/<arm>``; write table and plot."""
    out = Path(out)
    result = compare_with_baseline(
        model, hook_name, tokens, options, variants=variants, out_dir=out
    )
    save_comparison(result, out)
    return summary_text(result)


def save_comparison(result: Comparison, out: Path) -> None:
    """``comparison.csv``, ``curves.csv`` and ``learning_curves.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / "comparison.csv", index=False)
    curves = [arm.curve.assign(arm=name) for name, arm in result.arms.items()]
    pd.concat(curves).to_csv(out / "curves.csv", index=False)
    result.figure.savefig(out / "learning_curves.png", dpi=120)


def summary_text(result: Comparison) -> str:
    """The comparison table and the steps-to-target ratio as plain text."""
    table = result.table[SUMMARY_COLUMNS].to_string(index=False, float_format="%.4g")
    if result.speedup is None:
        speedup = "n/a (target not reached)"
    elif result.speedup == float("inf"):
        speedup = "reached at initialisation (step 0)"
    else:
        speedup = f"{result.speedup:.2f}x"
    return (
        f"{table}\n"
        f"target MSE (baseline's final): {result.target_mse:.4g}; "
        f"steps to reach it: {result.steps_to_target}; "
        f"speedup (baseline steps / tokenized steps): {speedup}"
    )
