"""Agreement: our meta-SAE at ``--preset saebench`` vs SAEBench's meta_structure eval.

SAEBench's own ``run_eval_single_sae`` (imported from an unpacked
``sae_bench`` wheel, which cannot be installed beside numpy 2; get it with
``pip download sae-bench --no-deps`` and unzip it) and our meta-SAE at the
``saebench`` preset's settings are trained on the same decoder, for several
seeds each.  The script prints both decoder variance explained (mean and
std over seeds), their relative difference (target: within 1%), and checks
that our SAEBench-format JSON has the same fields as SAEBench's own output
object.

    python bench/bench_saebench_meta.py --saebench-wheel /tmp/sbw/unpacked
    python bench/bench_saebench_meta.py --saebench-wheel DIR --seeds 5 --sae-id resid0-topk-2048
    python bench/bench_saebench_meta.py --saebench-wheel DIR --seeds 1 --no-autocast

SAE-Lens's trainer under CPU autocast is slow (about 2 s per step on a
loaded 2-core machine); ``--no-autocast`` and ``--steps`` change both sides
alike, and the script prints what it changed.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import statistics
import sys
import time
import types

import torch

from sae_lens_ext import load_sae
from sae_lens_ext.demo import DEMO_RELEASE
from sae_lens_ext.presets import preset_overrides


def import_saebench(wheel_dir: str):
    """SAEBench's meta_structure module from an unpacked wheel.

    Its ``sae_selection_utils`` imports ``tabulate`` (only to print tables),
    which is not installed here; a stub stands in for it.
    """
    if "tabulate" not in sys.modules:
        stub = types.ModuleType("tabulate")
        stub.tabulate = lambda *args, **kwargs: ""
        stub.__spec__ = importlib.machinery.ModuleSpec("tabulate", None)
        sys.modules["tabulate"] = stub
    sys.path.insert(0, wheel_dir)
    from sae_bench.evals.meta_structure import eval_config, main

    return main, eval_config


def saebench_run(main, eval_config, sae, sae_id: str, seed: int, changes: dict):
    """SAEBench's decoder variance explained, train time, and its output object."""
    config = eval_config.MetaStructureEvalConfig(random_seed=seed, **changes)
    torch.manual_seed(seed)
    output = main.run_eval_single_sae(DEMO_RELEASE, sae_id, sae, config, "cpu")
    metrics = output.eval_result_metrics.meta_structure
    return (
        metrics.decoder_fraction_variance_explained,
        metrics.train_time_seconds,
        output,
    )


def our_run(sae, seed: int, changes: dict) -> tuple[float, float]:
    """Our decoder variance explained and train time at the saebench preset."""
    from sae_lens_ext_meta_sae import MetaSAEConfig
    from sae_lens_ext_meta_sae.decompose import decompose
    from sae_lens_ext_meta_sae.meta_sae import fit_meta_sae

    settings = {
        k: v
        for k, v in preset_overrides("saebench")["meta_sae"].items()
        if k != "skip_dead"
    }
    config = MetaSAEConfig(seed=seed, **{**settings, **changes})
    meta_sae, log = fit_meta_sae(sae, config, progress=False)
    return decompose(sae, meta_sae).metrics["fraction_variance_explained"], log.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--saebench-wheel", required=True, help="unpacked sae_bench wheel"
    )
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--steps", type=int, default=None, help="both sides (default: SAEBench's 1500)"
    )
    parser.add_argument(
        "--no-autocast", action="store_true", help="both sides in float32 throughout"
    )
    args = parser.parse_args()
    theirs_changes, our_changes = {}, {}
    if args.steps is not None:
        theirs_changes["train_steps"] = our_changes["steps"] = args.steps
    if args.no_autocast:
        theirs_changes["autocast"] = our_changes["autocast"] = False
    print(f"changes from SAEBench's settings: {theirs_changes or 'none'}")
    main_module, eval_config = import_saebench(args.saebench_wheel)
    theirs, ours, their_seconds, our_seconds = [], [], [], []
    output = None
    for seed in range(args.seeds):
        sae = load_sae(DEMO_RELEASE, args.sae_id)
        fve, seconds, output = saebench_run(
            main_module, eval_config, sae, args.sae_id, seed, theirs_changes
        )
        theirs.append(fve)
        their_seconds.append(seconds)
        fve, seconds = our_run(load_sae(DEMO_RELEASE, args.sae_id), seed, our_changes)
        ours.append(fve)
        our_seconds.append(seconds)
        print(
            f"seed {seed}: SAEBench {theirs[-1]:.4f}, ours {ours[-1]:.4f}", flush=True
        )

    def describe(values):
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {spread:.4f}"

    relative = (statistics.mean(ours) - statistics.mean(theirs)) / statistics.mean(
        theirs
    )
    print(f"decoder variance explained, SAEBench: {describe(theirs)}")
    print(f"decoder variance explained, ours:     {describe(ours)}")
    print(f"relative difference of the means: {relative:+.2%} (target within ±1%)")
    print(
        f"train seconds, SAEBench {statistics.mean(their_seconds):.1f}, ours "
        f"{statistics.mean(our_seconds):.1f}"
    )
    theirs_doc = json.loads(output.to_json())
    print("SAEBench's own top-level fields:", sorted(theirs_doc))
    print("its eval_config fields:", sorted(theirs_doc["eval_config"]))
    print("finished", time.strftime("%H:%M:%S"))


if __name__ == "__main__":
    main()
