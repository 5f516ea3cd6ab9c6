"""Sweep vs one SAE's run vs separate runs, alternated in one process, with stages.

Takes the demo release's SAEs at one hook (the hook of the release's
default SAE; every SAE release.json lists there), and with the same
plugins and tokens times, in turn for ``--rounds`` rounds (medians with the
min-max range; the order alternates so drifting load hits every side):

- ``one``: ``sae_lens_ext.run`` of the default SAE alone;
- ``sweep``: ``sae_lens_ext.sweep`` of all of them (local executor: one
  model pass per batch and one clean and ablated CE pass per chunk for all,
  each SAE's own analyses);
- ``separate``: one ``run`` per SAE, as before sweeps existed;
- ``ray`` (with ``--ray``, once, after the rounds): the same sweep on a
  local Ray cluster (``ray.init(num_cpus=N)``), whose metrics must equal
  the local sweep's.

Each side's time is split into stages (exclusive: a stage nested in another
counts only in the inner one): every analysis's ``update`` and ``finish``,
the CE passes (``downstream_metrics_many``), encoding and feeding each batch
to an SAE (``SAEFeed.feed`` less the analyses' updates), writing results
(tables, tensors, plots), and ``other`` (model and SAE loading, tokens, the
model's forward pass, summaries, cards, the comparison).  Prints one JSON
object: medians, the ratios sweep/one and separate/one (round by round),
the stages of the last round, and the load average before and after.
Targets: sweep <= 1.6x one, ray <= 1.3x local.

    python bench/bench_sweep.py                              # base,mdl,absorption, 16,384 tokens
    python bench/bench_sweep.py --n-tokens 8192 --rounds 3 --json out.json
    python bench/bench_sweep.py --n-tokens 8192 --skip-separate --ray
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import Spread, paired_ratio, write_json  # noqa: E402

import sae_lens_ext  # noqa: E402
from sae_lens_ext.demo import (  # noqa: E402
    DEMO_RELEASE,
    demo_release_info,
    demo_sae_path,
)


def saes_at_default_hook() -> tuple[str, list[str]]:
    """The default SAE's hook and every demo SAE at that hook."""
    info = demo_release_info()

    def hook(sae_id: str) -> str:
        cfg = json.loads((demo_sae_path(sae_id) / "cfg.json").read_text())
        return cfg["metadata"]["hook_name"]

    default_hook = hook(info["default_sae_id"])
    return default_hook, [s for s in info["saes"] if hook(s) == default_hook]


class Stages:
    """Exclusive wall time per stage: a nested timed call counts only in itself."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[list[float]] = []  # per open call: [child seconds]
        self.undo: list = []

    def wrap(self, owner, attribute: str, stage: str) -> None:
        """Time ``owner.attribute`` (a function or method) as ``stage``."""
        original = owner.__dict__[attribute]  # a module's function or a class's

        def timed(*args, **kwargs):
            started = time.perf_counter()
            self.stack.append([0.0])
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                children = self.stack.pop()[0]
                self.seconds[stage] += elapsed - children
                if self.stack:
                    self.stack[-1][0] += elapsed

        setattr(owner, attribute, timed)
        self.undo.append((owner, attribute, original))

    def install(self) -> None:
        """Wrap the analyses, the CE passes, feeding and writing."""
        from sae_lens_ext import downstream, runner, shared_pass, sweep_downstream
        from sae_lens_ext.plugins import get_registry

        for name, (_, cls) in get_registry().analyses().items():
            for method in ("update", "finish"):
                if method in cls.__dict__:
                    self.wrap(cls, method, f"{name}.{method}")
        self.wrap(downstream, "downstream_metrics_many", "ce passes")
        self.wrap(sweep_downstream, "downstream_metrics_many", "ce passes")
        self.wrap(shared_pass.SAEFeed, "feed", "encode + feed")
        self.wrap(runner, "write_result", "write results")

    def remove(self) -> None:
        """Put every wrapped function back."""
        for owner, attribute, original in reversed(self.undo):
            setattr(owner, attribute, original)
        self.undo.clear()

    def take(self, total: float) -> dict[str, float]:
        """This side's stages (and ``other``), then start afresh."""
        stages = {k: round(v, 2) for k, v in sorted(self.seconds.items())}
        stages["other"] = round(total - sum(self.seconds.values()), 2)
        self.seconds.clear()
        return stages


def timed(stages: Stages, function, *args, **kwargs):
    """``(seconds, stages, result)`` of one call; the time also goes to stderr."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - start
    print(f"[bench_sweep] {kwargs.get('out_dir')}: {seconds:.1f} s, load "
          f"{os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)  # fmt: skip
    return seconds, stages.take(seconds), result


def metrics_of(run_dir: Path) -> dict:
    """Every analysis's metrics in a run directory's ``summary.json``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return {n: e.get("metrics") for n, e in summary["analyses"].items()}


def main() -> None:
    """Alternate the sides for the rounds, then print medians, ratios and stages."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugins", default="base,mdl,absorption")
    parser.add_argument("--n-tokens", type=int, default=16_384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--ray", action="store_true", help="also time the Ray executor")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--skip-separate", action="store_true")
    parser.add_argument(
        "--skip-one", action="store_true", help="only the sweeps (local vs Ray)"
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
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
    # warm-up, not timed: imports, plugin registry, the demo model's first
    # build, and every plugin's and the sweep's first calls
    warm = dict(options, n_tokens=256)
    sae_lens_ext.run(DEMO_RELEASE, default_id, out_dir=f"{out}/warm", **warm)
    sae_lens_ext.sweep(DEMO_RELEASE, sae_ids[:2], out_dir=f"{out}/warm-sweep", **warm)
    stages = Stages()
    stages.install()
    sides = {}
    if not args.skip_one:
        sides["one"] = lambda r: timed(
            stages, sae_lens_ext.run, DEMO_RELEASE, default_id,
            out_dir=f"{out}/{r}/one", **options,
        )  # fmt: skip
    sides["sweep"] = lambda r: timed(
        stages, sae_lens_ext.sweep, DEMO_RELEASE, sae_ids,
        out_dir=f"{out}/{r}/sweep", **options,
    )  # fmt: skip
    if not args.skip_separate:

        def separate(r):
            runs = [
                timed(stages, sae_lens_ext.run, DEMO_RELEASE, sae_id,
                      out_dir=f"{out}/{r}/separate/{sae_id}", **options)
                for sae_id in sae_ids
            ]  # fmt: skip
            merged = defaultdict(float)
            for _, run_stages, _ in runs:
                for stage, seconds in run_stages.items():
                    merged[stage] += seconds
            return sum(r[0] for r in runs), dict(merged), None

        sides["separate"] = separate
    samples = {name: [] for name in sides}
    last_stages, local = {}, None
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            seconds, side_stages, result = sides[name](r)
            samples[name].append(seconds)
            last_stages[name] = side_stages
            if name == "sweep":
                local = result
    stages.remove()
    times = {name: Spread(tuple(values)) for name, values in samples.items()}
    result = {
        "hook": hook,
        "saes": sae_ids,
        "plugins": args.plugins,
        "n_tokens": args.n_tokens,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "seconds": times,
    }
    if "one" in times:
        result["sweep_over_one"] = paired_ratio(times["sweep"], times["one"])
    if "separate" in times and "one" in times:
        result["separate_over_one"] = paired_ratio(times["separate"], times["one"])
    if "separate" in times:
        result["separate_over_sweep"] = paired_ratio(times["separate"], times["sweep"])
    result["stages_last_round"] = last_stages
    if args.ray:
        import ray

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        seconds, _, remote = timed(
            Stages(), sae_lens_ext.sweep, DEMO_RELEASE, sae_ids,
            out_dir=f"{out}/ray", executor="ray", **options,
        )  # fmt: skip
        ray.shutdown()
        result["ray_seconds"] = round(seconds, 2)
        result["ray_over_local_last_round"] = round(seconds / samples["sweep"][-1], 3)
        result["ray_metrics_identical"] = all(
            metrics_of(local.sweep_dir / s) == metrics_of(remote.sweep_dir / s)
            for s in local.comparison["run_dir"]
        )
    result["load_before"] = [round(x, 2) for x in load_before]
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result["cpus"] = os.cpu_count()
    write_json(args.json, result)
    print(json.dumps(result, indent=2, default=lambda spread: spread.as_dict()))


if __name__ == "__main__":
    main()
