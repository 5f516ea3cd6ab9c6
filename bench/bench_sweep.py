"""Sweep vs one SAE's run vs separate runs, side by side in one process.

Takes the demo release's SAEs at one hook (the hook of the release's
default SAE; every SAE release.json lists there), and with the same
plugins and tokens measures, one after another in this process:

- ``one``: ``sae_lens_ext.run`` of the default SAE alone;
- ``sweep``: ``sae_lens_ext.sweep`` of all of them (local executor: one
  model pass per batch for all, each SAE's own analyses);
- ``separate``: one ``run`` per SAE, as before sweeps existed;
- ``ray`` (with ``--ray``): the same sweep on a local Ray cluster
  (``ray.init(num_cpus=N)``), whose metrics must equal the local sweep's.

Prints one JSON object: wall seconds, the ratios sweep/one, separate/one
and ray/local, and the load average before and after.  Targets: sweep
<= 1.6x one, ray <= 1.3x local.

    python bench/bench_sweep.py                          # base,mdl,absorption, 65,536 tokens
    python bench/bench_sweep.py --n-tokens 16384 --ray   # quicker, with Ray
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import sae_lens_ext
from sae_lens_ext.demo import DEMO_RELEASE, demo_release_info, demo_sae_path


def saes_at_default_hook() -> tuple[str, list[str]]:
    """The default SAE's hook and every demo SAE at that hook."""
    info = demo_release_info()

    def hook(sae_id: str) -> str:
        cfg = json.loads((demo_sae_path(sae_id) / "cfg.json").read_text())
        return cfg["metadata"]["hook_name"]

    default_hook = hook(info["default_sae_id"])
    return default_hook, [s for s in info["saes"] if hook(s) == default_hook]


def timed(function, *args, **kwargs):
    """``(seconds, result)`` of one call; the time also goes to stderr at once."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - start
    print(f"[bench_sweep] {kwargs.get('out_dir')}: {seconds:.1f} s, load "
          f"{os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)  # fmt: skip
    return seconds, result


def metrics_of(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {n: e.get("metrics") for n, e in summary["analyses"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugins", default="base,mdl,absorption")
    parser.add_argument("--n-tokens", type=int, default=65_536)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray", action="store_true", help="also time the Ray executor")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--skip-separate", action="store_true")
    parser.add_argument(
        "--skip-one", action="store_true", help="only the sweeps (local vs Ray)"
    )
    args = parser.parse_args()
    hook, sae_ids = saes_at_default_hook()
    default_id = demo_release_info()["default_sae_id"]
    options = dict(
        plugins=args.plugins,
        n_tokens=args.n_tokens,
        batch_size=args.batch_size,
        device="cpu",
    )
    load_before = os.getloadavg()
    out = tempfile.mkdtemp(prefix="bench-sweep-")
    # warm-up: imports, plugin registry, the demo model's first build
    sae_lens_ext.run(DEMO_RELEASE, default_id, plugins="base", n_tokens=256,
                     out_dir=f"{out}/warm")  # fmt: skip
    seconds = {}
    if not args.skip_one:
        seconds["one"], _ = timed(
            sae_lens_ext.run, DEMO_RELEASE, default_id, out_dir=f"{out}/one", **options
        )
    seconds["sweep"], local = timed(
        sae_lens_ext.sweep, DEMO_RELEASE, sae_ids, out_dir=f"{out}/sweep", **options
    )
    if not args.skip_separate:
        seconds["separate"] = sum(
            timed(
                sae_lens_ext.run,
                DEMO_RELEASE,
                sae_id,
                out_dir=f"{out}/separate/{sae_id}",
                **options,
            )[0]
            for sae_id in sae_ids
        )
    result = {
        "hook": hook,
        "saes": sae_ids,
        "plugins": args.plugins,
        "n_tokens": args.n_tokens,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    if "one" in seconds:
        result["sweep_over_one"] = round(seconds["sweep"] / seconds["one"], 3)
    if "separate" in seconds and "one" in seconds:
        result["separate_over_one"] = round(seconds["separate"] / seconds["one"], 3)
    if args.ray:
        import ray

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        seconds["ray"], remote = timed(
            sae_lens_ext.sweep,
            DEMO_RELEASE,
            sae_ids,
            out_dir=f"{out}/ray",
            executor="ray",
            **options,
        )
        ray.shutdown()
        result["seconds"]["ray"] = round(seconds["ray"], 2)
        result["ray_over_local"] = round(seconds["ray"] / seconds["sweep"], 3)
        result["ray_metrics_identical"] = all(
            metrics_of(local.sweep_dir / s) == metrics_of(remote.sweep_dir / s)
            for s in local.comparison["run_dir"]
        )
    result["load_before"] = [round(x, 2) for x in load_before]
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
