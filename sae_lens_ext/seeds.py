"""``--seeds N``: rerun with N seeds and report each headline metric as mean ± std.

The stochastic parts of a run (the absorption probes' train/test split, the
meta-SAE's training, the LLC chains) all draw from the run's ``seed``, so
running with seeds ``seed .. seed + N - 1`` and pooling the metrics measures
how much a number moves by chance.  Each seed's run is a complete run
directory ``<out>/seed-<s>``; pass ``cache_dir`` so the model runs once
and later seeds read the cached activations.  ``<out>/seeds.json`` and
``<out>/seeds.csv`` hold mean, std (sample, N - 1), min and max per metric;
metrics that are the same in every seed have std 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .artifacts import json_safe


def seeded_run(n_seeds: int):
    """A function like ``sae_lens_ext.run`` that runs ``n_seeds`` seeds.

    It prints the mean ± std table and returns the last seed's
    :class:`RunOutput`; with one seed it is ``run`` itself.
    """
    from .runner import run

    if n_seeds == 1:
        return run

    def run_n(release=None, sae_id=None, **options):
        import click

        outputs, table = run_seeds(n_seeds, release, sae_id, **options)
        click.echo(f"{n_seeds} seeds, mean ± std (all in {options['out_dir']}):")
        click.echo(format_table(table))
        return outputs[-1]

    return run_n


def run_seeds(
    n_seeds: int, release=None, sae_id=None, *, out_dir, seed: int = 0, **options
):
    """Run ``sae_lens_ext.run`` once per seed and summarise the metrics.

    Returns ``(outputs, table)``: the :class:`RunOutput` of every seed and
    a DataFrame with one row per (analysis, metric).
    """
    from .runner import RunError, run

    if n_seeds < 2:
        raise RunError(
            f"--seeds needs at least 2 seeds to estimate a spread, got {n_seeds}"
        )
    if out_dir is None:
        raise RunError("--seeds needs --out: each seed's run goes in a subfolder")
    out_dir = Path(out_dir)
    outputs = [
        run(release, sae_id, out_dir=out_dir / f"seed-{s}", seed=s, **options)
        for s in range(seed, seed + n_seeds)
    ]
    table = seed_table([o.summary for o in outputs])
    table.to_csv(out_dir / "seeds.csv", index=False)
    record = {
        "seeds": list(range(seed, seed + n_seeds)),
        "runs": [str(o.run_dir) for o in outputs],
        "metrics": table.to_dict(orient="records"),
    }
    (out_dir / "seeds.json").write_text(json.dumps(json_safe(record), indent=2) + "\n")
    return outputs, table


def seed_table(summaries: list[dict]) -> pd.DataFrame:
    """Mean, std, min and max over runs of every numeric metric, with its direction."""
    rows = []
    first = summaries[0]["analyses"]
    for name, entry in first.items():
        for key, value in entry.get("metrics", {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float | None):
                continue
            values = [
                s["analyses"].get(name, {}).get("metrics", {}).get(key)
                for s in summaries
            ]
            finite = [
                float(v) for v in values if v is not None and math.isfinite(float(v))
            ]
            if len(finite) < 2:
                continue
            series = pd.Series(finite)
            rows.append(
                {
                    "analysis": name,
                    "metric": key,
                    "better": entry.get("directions", {}).get(key, ""),
                    "mean": series.mean(),
                    "std": series.std(ddof=1),
                    "min": series.min(),
                    "max": series.max(),
                    "n": len(finite),
                }
            )
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """One line per metric: ``analysis.metric = mean ± std (better)``."""
    return "\n".join(
        f"  {row.analysis}.{row.metric} = {row.mean:.4g} ± {row.std:.2g}"
        + (f" ({row.better} is better)" if row.better in ("higher", "lower") else "")
        for row in table.itertuples()
    )
