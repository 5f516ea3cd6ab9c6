"""First-letter absorption and encoder-vs-decoder score across the demo widths.

Runs the absorption analysis (its defaults: 65,536 held-out tokens, top_n
32) on the demo release's TopK SAEs of one hook, widths 512, 1024 and 2048
(same k = 16, so the same L0), and prints one row per SAE: the first-letter
absorption rate and fraction (Chanin et al.; SAEBench), and the
encoder-vs-decoder mean absorption score and suspected latents, side by side.

    python bench/absorption_widths.py                 # resid0 (the default hook)
    python bench/absorption_widths.py --layer resid1  # the later hook
    python bench/absorption_widths.py --json out.json # also the rows as JSON
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from sae_lens_ext_absorption import absorption_report

from sae_lens_ext import load_sae
from sae_lens_ext.demo import DEMO_RELEASE, demo_eval_tokens, load_demo_model

COLUMNS = {
    "first_letter_letters_evaluated": "letters",
    "first_letter_mean_probe_f1": "probe F1",
    "first_letter_mean_absorption_rate": "first-letter rate",
    "first_letter_mean_absorption_fraction": "first-letter fraction",
    "mean_absorption_score": "enc-vs-dec score",
    "suspected_latents": "suspected",
    "alive_latents": "alive",
}


def width_table(layer: str, n_tokens: int) -> pd.DataFrame:
    """One row of absorption metrics per width of ``layer``'s TopK SAEs."""
    model = load_demo_model()
    tokens = demo_eval_tokens()
    rows = []
    for width in (512, 1024, 2048):
        sae_id = f"{layer}-topk-{width}"
        sae = load_sae(DEMO_RELEASE, sae_id)
        metrics = absorption_report(sae, tokens, model=model, n_tokens=n_tokens).metrics
        rows.append({"sae_id": sae_id, **{v: metrics[k] for k, v in COLUMNS.items()}})
    return pd.DataFrame(rows)


def main() -> None:
    """Print the table as markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="resid0")
    parser.add_argument("--n-tokens", type=int, default=65_536)
    parser.add_argument(
        "--json", type=Path, help="also write {sae_id: {column: value}} to this file"
    )
    args = parser.parse_args()
    table = width_table(args.layer, args.n_tokens)
    if args.json:
        rows = table.set_index("sae_id").to_dict(orient="index")
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
