"""docs/img/sweep/comparison_{meta_sae,llc}.png: a cheap demo sweep with meta-SAE and LLC.

The four demo SAEs at ``blocks.0.hook_resid_post`` through ``meta_sae`` and
``llc`` at reduced settings (few tokens, training steps and draws, listed in
``SETTINGS`` and printed), so the run takes minutes on a CPU; the plots show
what a sweep draws, their values are not calibrated results.

    PYTHONPATH=.:plugins python docs/scripts/sweep_meta_llc.py [--out runs/sweep-meta-llc]

Prints the settings, the comparison's meta-SAE and LLC columns and the
wall time, and copies both plots into docs/img/sweep/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import sae_lens_ext

SAE_IDS = "resid0-*"
SETTINGS = {
    "plugins": "meta_sae,llc",
    "n_tokens": 2048,
    "batch_size": 32,
    "device": "cpu",
    "config": {
        "meta_sae": {"steps": 300, "batch_size": 256, "null_seeds": 2},
        "llc": {
            "max_tokens": 64,
            "num_chains": 2,
            "num_draws": 40,
            "num_burnin": 10,
            "step_size": 1e-4,
        },
    },
}
COLUMNS = [
    "sae_id", "width", "l0",
    "meta_sae.fraction_variance_explained", "meta_sae.null_fve",
    "meta_sae.fve_above_null", "llc.llc", "llc.llc_se",
]  # fmt: skip


def main() -> None:
    """Run the sweep, print its comparison and copy the two plots into the docs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/sweep-meta-llc")
    args = parser.parse_args()
    print(json.dumps(SETTINGS, indent=1))
    start, load = time.perf_counter(), os.getloadavg()
    out = sae_lens_ext.sweep(
        "sae-lens-ext/demo", SAE_IDS, out_dir=args.out, overwrite=True, **SETTINGS
    )
    seconds = time.perf_counter() - start
    print(out.comparison[[c for c in COLUMNS if c in out.comparison]].to_string())
    print(f"failures: {out.failures}")
    print(f"wall {seconds:.0f} s, load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    images = Path(__file__).resolve().parents[1] / "img" / "sweep"
    for name in ("comparison_meta_sae.png", "comparison_llc.png"):
        shutil.copy(out.sweep_dir / name, images / name)
        print(f"wrote {images / name}")


if __name__ == "__main__":
    main()
