"""docs/img/llc-good-bad.png: traces of a setting calibrate_llc recommends
next to one it rejects, on a linear regression with d = 10 (true LLC 5).

    PYTHONPATH=.:plugins python docs/scripts/llc_good_bad_traces.py

Prints the calibration table and both estimates.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from sae_lens_ext_llc import calibrate_llc, estimate_llc
from sae_lens_ext_llc.plots import side_by_side_plot
from torch import nn


def mse(model, batch):
    """Mean squared error of ``model`` on an ``(inputs, targets)`` batch."""
    inputs, targets = batch
    return (model(inputs) - targets).pow(2).mean()


def main() -> None:
    """Calibrate, estimate at the recommendation and at the rejected 1e-5, plot."""
    generator = torch.Generator().manual_seed(10)
    inputs = torch.randn(1000, 10, generator=generator)
    targets = inputs @ torch.randn(10, 1, generator=generator)
    targets += 0.5 * torch.randn(1000, 1, generator=generator)
    model = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets).solution.T)
    data = (inputs, targets)
    calibration = calibrate_llc(model, mse, data, progress=False)
    columns = ["round", "step_size", "num_burnin", "num_draws", "llc", "llc_se"]
    columns += ["acceptance", "loss_drift", "distance_drift", "flags", "healthy"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        table = calibration.table[columns].round(3)
        table["step_size"] = calibration.table["step_size"].map("{:.3g}".format)
        print(table.to_string(index=False))
    print("recommended:", calibration.reason)
    good = estimate_llc(
        model, mse, data, progress=False, **calibration.estimate_options()
    )
    bad = estimate_llc(
        model, mse, data, step_size=1e-5, num_burnin=50, num_draws=200, progress=False
    )
    print(
        f"good: {good.llc:.3f} ± {good.llc_se:.3f}; bad: {bad.llc:.3f} ± {bad.llc_se:.3f}"
    )
    options = calibration.estimate_options()
    figure = side_by_side_plot(
        {
            f"recommended: ε {options['step_size']:.3g}, "
            f"{options['num_burnin']} + {options['num_draws']} steps": good,
            "rejected (not stationary): ε 1e-05, 50 + 200 steps": bad,
        }
    )
    out = Path(__file__).resolve().parents[1] / "img" / "llc-good-bad.png"
    figure.savefig(out, dpi=110)
    print("wrote", out)


if __name__ == "__main__":
    main()
