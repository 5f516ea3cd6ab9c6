"""Time one analysis's own stage inside a run on the demo release.

Runs ``sae_lens_ext.run`` with the chosen plugins ``--repeats`` times and
times each analysis's own ``update`` (per shared-pass batch) and ``finish``
calls, next to the whole run's ``duration_s``.  Prints medians with their
min-max range; ``--json`` also writes them (``scripts/refresh_docs.py``
reads that).

    python scripts/stage_timing.py -p meta_sae
    python scripts/stage_timing.py -p tokenized --set tokenized.train_sae=false
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from timing import Spread, write_json  # noqa: E402


def timed_run(plugins: str, config: dict) -> tuple[dict[str, float], float]:
    """One run; seconds spent in each analysis's update + finish, and the run's."""
    import sae_lens_ext
    from sae_lens_ext.plugins import get_registry

    spent: dict[str, float] = defaultdict(float)
    originals = {}
    for name, (_, cls) in get_registry().analyses().items():
        for method in ("update", "finish"):
            original = cls.__dict__.get(method)
            if original is None:
                continue
            originals[(cls, method)] = original
            setattr(cls, method, _timed(original, name, spent))
    try:
        with tempfile.TemporaryDirectory() as folder:
            out = sae_lens_ext.run(
                plugins=plugins, config=config, out_dir=Path(folder) / "run"
            )
            duration = out.summary["duration_s"]
    finally:
        for (cls, method), original in originals.items():
            setattr(cls, method, original)
    return dict(spent), duration


def _timed(method, name: str, spent: dict[str, float]):
    """``method`` wrapped to add its wall time to ``spent[name]``."""

    def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started

    return wrapper


def parse_setting(text: str) -> tuple[str, str, object]:
    """``analysis.field=value`` -> (analysis, field, JSON-decoded value)."""
    target, _, raw = text.partition("=")
    analysis, _, field = target.partition(".")
    if not (analysis and field and raw):
        raise argparse.ArgumentTypeError(f"expected analysis.field=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return analysis, field, value


def main() -> None:
    """Time the stages and print (and optionally save) medians with ranges."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--plugins", required=True)
    parser.add_argument("--set", type=parse_setting, action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    config: dict[str, dict] = defaultdict(dict)
    for analysis, field, value in args.set:
        config[analysis][field] = value
    stages: dict[str, list[float]] = defaultdict(list)
    runs = []
    for _ in range(args.repeats):
        spent, duration = timed_run(args.plugins, dict(config))
        for name, seconds in spent.items():
            stages[name].append(seconds)
        runs.append(duration)
        record = {"run": Spread(tuple(runs))}
        record.update({name: Spread(tuple(s)) for name, s in stages.items()})
        write_json(args.json, record)  # after every run: a cut-short job keeps its runs
    for name, spread in record.items():
        print(f"{name:>12}: {spread.text()}")


if __name__ == "__main__":
    main()
