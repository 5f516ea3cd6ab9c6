"""A sweep's comparison: one row per SAE, plots across widths and L0, a model card.

``comparison.parquet``/``.csv`` hold each SAE's release, id, hook, width,
L0, status and every scalar metric of every analysis (``<analysis>.<metric>``).
The plots show the headline metrics across the sweep (one series per hook and
architecture):
MDL bits per token against L0 and width with the MDL-optimal SAE marked,
both absorption diagnostics against width, the meta-SAE's variance
explained above its null against width, and the LLC against width.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .analysis import AnalysisResult
from .artifacts import write_result
from .sweep_plan import SweepSAE

MDL_BITS = "mdl.bits_per_token"
MDL_OK = "mdl.tolerance_met"
ABSORPTION_DIAGNOSTICS = {
    "absorption.mean_absorption_score": "encoder vs decoder: mean absorption score",
    "absorption.first_letter_mean_absorption_rate": "first-letter probe: absorption rate",
    "absorption.first_letter_mean_absorption_fraction": "first-letter probe: absorbed fraction",
}
META_FVE = "meta_sae.fve_above_null"
LLC = "llc.llc"
CARD = "README.md"


def comparison_table(
    sweep_dir: Path, specs: list[SweepSAE], entries: dict[str, dict]
) -> pd.DataFrame:
    """One row per SAE from its run directory's ``summary.json``."""
    rows = []
    for spec in specs:
        row = {
            "release": spec.release,
            "sae_id": spec.sae_id,
            "hook_name": spec.hook_name,
            "architecture": spec.architecture,
            "width": spec.d_sae,
            "d_in": spec.d_in,
            "status": entries.get(spec.sae_id, {}).get("status", "pending"),
            "run_dir": spec.slug,
        }
        summary_path = sweep_dir / spec.slug / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            row["n_tokens"] = summary.get("n_tokens")
            for name, entry in summary.get("analyses", {}).items():
                for metric, value in (entry.get("metrics") or {}).items():
                    if isinstance(value, (int, float, bool)) and value is not None:
                        row[f"{name}.{metric}"] = value
        row["l0"] = row.get("base.l0", row.get("mdl.l0", math.nan))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["mdl_optimal"] = False
    best = mdl_optimal(table)
    if best is not None:
        table.loc[best, "mdl_optimal"] = True
    return table


def mdl_optimal(table: pd.DataFrame):
    """Index of the SAE with the fewest bits per token among those meeting the MDL tolerance.

    Following Ayonrinde et al., SAEs are compared at equal reconstruction
    quality: only those whose quantised code met the loss tolerance count.
    """
    if MDL_BITS not in table:
        return None
    candidates = table[table[MDL_BITS].notna()]
    if MDL_OK in candidates:
        candidates = candidates[candidates[MDL_OK].fillna(False).astype(bool)]
    if candidates.empty:
        return None
    return candidates[MDL_BITS].idxmin()


def comparison_plots(table: pd.DataFrame) -> dict:
    """The comparison figures whose metrics the sweep has."""
    plots = {}
    if MDL_BITS in table and table[MDL_BITS].notna().any():
        plots["comparison_mdl"] = mdl_plot(table)
    absorption = [c for c in ABSORPTION_DIAGNOSTICS if c in table]
    if absorption:
        plots["comparison_absorption"] = metric_panels(
            table, absorption, ABSORPTION_DIAGNOSTICS, "Absorption against width"
        )
    if META_FVE in table:
        plots["comparison_meta_sae"] = metric_panels(
            table,
            [META_FVE],
            {META_FVE: "meta-SAE FVE above its null"},
            "Meta-SAE against width",
            errors={META_FVE: "meta_sae.null_fve_std"},
        )
    if LLC in table:
        plots["comparison_llc"] = metric_panels(
            table,
            [LLC],
            {LLC: "local learning coefficient"},
            "LLC against width",
            errors={LLC: "llc.llc_se"},
        )
    return plots


def _by_hook(table: pd.DataFrame):
    """One series per hook and architecture (lines never join unlike SAEs)."""
    hooks = table["hook_name"].fillna("?")
    if "architecture" in table:
        hooks = hooks + " (" + table["architecture"].fillna("?").astype(str) + ")"
    return table.groupby(hooks, sort=True)


def mdl_plot(table: pd.DataFrame):
    """Bits per token against L0 and against width, MDL-optimal SAE marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    data = table[table[MDL_BITS].notna()]
    for ax, x, label in ((axes[0], "l0", "L0"), (axes[1], "width", "width (d_sae)")):
        for hook, rows in _by_hook(data):
            ax.scatter(rows[x], rows[MDL_BITS], label=hook)
            for _, row in rows.iterrows():
                ax.annotate(
                    row["sae_id"], (row[x], row[MDL_BITS]), fontsize=7, alpha=0.7
                )
        best = data[data["mdl_optimal"]]
        if not best.empty:
            ax.scatter(
                best[x],
                best[MDL_BITS],
                s=260,
                marker="*",
                color="gold",
                edgecolor="black",
                zorder=5,
                label="MDL-optimal",
            )
        if x == "width":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("description length (bits / token)")
        ax.legend(fontsize=7)
    fig.suptitle("MDL across the sweep (lower is better, at the loss tolerance)")
    fig.tight_layout()
    return fig


def metric_panels(table, columns, labels, title, errors=None):
    """One panel per metric against width (log2), one series per hook."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(columns), figsize=(5 * len(columns), 4), squeeze=False
    )
    for ax, column in zip(axes[0], columns, strict=True):
        data = table[table[column].notna()]
        err_col = (errors or {}).get(column)
        for hook, rows in _by_hook(data.sort_values("width")):
            yerr = rows[err_col] if err_col and err_col in rows else None
            ax.errorbar(
                rows["width"],
                rows[column],
                yerr=yerr,
                marker="o",
                capsize=3,
                label=hook,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width (d_sae)")
        ax.set_ylabel(labels[column])
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_comparison(
    sweep_dir: Path, specs: list[SweepSAE], entries: dict[str, dict]
) -> pd.DataFrame:
    """Write the table, the plots and the sweep's model card; return the table."""
    import matplotlib.pyplot as plt

    table = comparison_table(sweep_dir, specs, entries)
    plots = comparison_plots(table)
    write_result(
        AnalysisResult(tables={"comparison": table}, plots=plots), sweep_dir, sweep_dir
    )
    for fig in plots.values():
        plt.close(fig)
    (sweep_dir / CARD).write_text(sweep_card(sweep_dir, table, list(plots)))
    return table


CARD_COLUMNS = (
    "sae_id",
    "hook_name",
    "width",
    "l0",
    "status",
    "base.explained_variance",
    "base.ce_loss_recovered",
    MDL_BITS,
    "absorption.mean_absorption_score",
    "absorption.first_letter_mean_absorption_rate",
    META_FVE,
    LLC,
)


def sweep_card(sweep_dir: Path, table: pd.DataFrame, plots: list[str]) -> str:
    """The sweep's Markdown model card: metadata, table, plots, how to load."""
    from .model_card import BASE_TAGS, REPO_PLACEHOLDER

    releases = sorted(set(table["release"])) if len(table) else []
    lines = [
        "---",
        "library_name: saelens",
        'license: "mit"',
        "tags:",
        *(f'- "{tag}"' for tag in (*BASE_TAGS, "sae-lens-ext-sweep")),
        "---",
        "",
        f"# sae-lens-ext sweep of {', '.join(releases) or 'no SAEs'}",
        "",
        f"{len(table)} SAEs; each SAE's analyses are in its own folder (an ordinary "
        "sae-lens-ext run directory with its own model card). The full table is "
        "`comparison.parquet` / `comparison.csv`.",
        "",
    ]
    shown = [c for c in CARD_COLUMNS if c in table]
    if shown:
        lines += [
            "| " + " | ".join(shown) + " |",
            "|" + "---|" * len(shown),
        ]
        for _, row in table.iterrows():
            cells = [_cell(row[c]) for c in shown]
            if row.get("mdl_optimal"):
                cells[0] += " (MDL-optimal)"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for name in plots:
        lines += [f"![{name}]({name}.png)", ""]
    folders = sorted(
        p.parent.relative_to(sweep_dir).as_posix()
        for p in sweep_dir.glob("*/*/*/cfg.json")
        if not p.parts[len(sweep_dir.parts)].startswith(".")
    )
    if folders:
        lines += [
            "## Loading the SAEs the analyses produced",
            "",
            "```python",
            "from sae_lens import SAE",
            "",
            *(f'SAE.from_pretrained("{REPO_PLACEHOLDER}", "{f}")' for f in folders),
            "```",
            "",
        ]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)
