"""The γ / nβ / step-size sweep behind the ``llc`` analysis's defaults.

Runs ``calibrate_llc`` on a demo SAE and the first ``--tokens`` activation rows
of the demo evaluation sequences (BOS dropped: the rows the default run's
``llc`` analysis keeps) over every step size x nβ, once per localization γ,
with no widening (the budget is the grid's own chain-steps), and prints one
row per setting: estimate ± SE, split R-hat, MALA acceptance and the verdict
flags (``healthy``, ``plateau``).  The grid documented in docs/llc.md:

    python bench/llc_sweep.py --localizations 100,1000
"""

from __future__ import annotations

import argparse
import math

import pandas as pd
import torch


def activation_rows(sae_id: str, n_rows: int) -> tuple[object, torch.Tensor]:
    """The demo SAE and its first ``n_rows`` non-BOS input rows."""
    from sae_lens import SAE

    from sae_lens_ext.demo import demo_eval_tokens, demo_sae_path, load_demo_model

    sae = SAE.load_from_disk(demo_sae_path(sae_id))
    model = load_demo_model()
    hook = sae.cfg.metadata.hook_name
    tokens = demo_eval_tokens()
    tokens = tokens[: n_rows // (tokens.shape[1] - 1) + 1]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook)
    return sae, cache[hook][:, 1:].reshape(-1, sae.cfg.d_in)[:n_rows].float()


def sweep(args) -> pd.DataFrame:
    """One ``calibrate_llc`` grid per localization, tables stacked."""
    from sae_lens_ext_llc import calibrate_llc, sae_loss_fn

    sae, rows = activation_rows(args.sae_id, args.tokens)
    loss = sae_loss_fn(float(rows.pow(2).sum(-1).mean()))
    m = len(rows)
    nbetas = [f * m / math.log(m) for f in args.nbeta_factors]
    settings = len(args.step_sizes) * len(nbetas)
    budget = settings * args.chains * (args.burnin + args.draws)
    tables = []
    for gamma in args.localizations:
        result = calibrate_llc(
            sae,
            loss,
            rows,
            step_sizes=args.step_sizes,
            nbetas=nbetas,
            localization=gamma,
            num_chains=args.chains,
            num_draws=args.draws,
            num_burnin=args.burnin,
            seed=args.seed,
            budget=budget,
        )
        print(f"γ = {gamma:g}: {result.reason}", flush=True)
        tables.append(result.table.assign(localization=gamma))
    return pd.concat(tables, ignore_index=True)


def floats(text: str) -> list[float]:
    """A comma-separated list of floats."""
    return [float(x) for x in text.split(",")]


def main() -> None:
    """Parse flags, run the sweep, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--step-sizes", type=floats, default=[3e-5, 1e-4, 3e-4])
    parser.add_argument(
        "--nbeta-factors",
        type=floats,
        default=[0.3, 1.0, 3.0],
        help="nβ as multiples of m / log m (the default nβ)",
    )
    parser.add_argument("--localizations", type=floats, default=[1000.0])
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--burnin", type=int, default=50)
    parser.add_argument("--draws", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = sweep(args)
    columns = ["localization", "step_size", "nbeta", "llc", "llc_se", "r_hat"]
    columns += ["acceptance", "sound", "plateau", "healthy", "flags"]
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table[columns].to_string(index=False))


if __name__ == "__main__":
    main()
