"""Meta-SAE ``d_meta`` and ``k`` on one run's live latents (docs/meta-sae.md).

Reads the base-latent ids a run's ``meta_sae`` analysis decomposed (its
``meta_sae/tensors.safetensors``), trains a meta-SAE at each ``d_meta`` x ``k``
of a small grid around the run's ``d_meta`` with the analysis's trainer
defaults, and prints one Markdown table row per setting: FVE, mean
reconstruction cosine, dead meta-latents and training seconds.

    sae-lens-ext run --out RUN            # or -p meta_sae
    python bench/meta_sae_grid.py RUN
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae_lens_ext import load_sae


def grid(d_meta: int) -> list[tuple[int, int]]:
    """Half, one, two and four times ``d_meta`` at k 4; ``d_meta`` at k 2 and 8."""
    return [(d_meta // 2, 4), (d_meta, 4), (2 * d_meta, 4), (4 * d_meta, 4)] + [
        (d_meta, 2),
        (d_meta, 8),
    ]


def main() -> None:
    """Train and score every setting of the grid; print table rows."""
    from sae_lens_ext_meta_sae import decompose, train_meta_sae

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run folder with a meta_sae part")
    args = parser.parse_args()
    summary = json.loads((args.run / "summary.json").read_text())
    metrics = summary["analyses"]["meta_sae"]["metrics"]
    ids = load_file(args.run / "meta_sae" / "tensors.safetensors")["base_latent_ids"]
    sae = load_sae(summary["release"], summary["sae_id"])
    print(f"{ids.numel()} rows, run d_meta {metrics['d_meta']}, ", end="")
    print(f"{torch.get_num_threads()} torch threads")
    print("| d_meta | k | FVE | mean cos | dead meta-latents | train s |")
    print("|---|---|---|---|---|---|")
    for d_meta, k in grid(int(metrics["d_meta"])):
        started = time.perf_counter()
        meta = train_meta_sae(sae, d_meta=d_meta, k=k, latents=ids, progress=False)
        seconds = time.perf_counter() - started
        scored = decompose(sae, meta, ids, null_seeds=0).metrics
        print(
            f"| {d_meta} | {k} | {scored['fraction_variance_explained']:.3f} "
            f"| {scored['mean_reconstruction_cosine']:.3f} "
            f"| {scored['dead_meta_latents']} | {seconds:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
