"""Documented numbers come from runs: re-run them, check them, or rewrite them.

A number in ``docs/*.md`` that a run produces is written between two HTML
comments that name its key in the registry (``scripts/docs_registry.py``)::

    **<!--n:mdl.1m.speedup-->7.5x<!--/n--> faster**

The comments do not render (mkdocs, GitHub), so the page reads as before.
For every key found in the docs this script runs the key's producer (a
benchmark or worked example, each producer once), formats the measured
value the way the docs show it, and compares it with the documented text
within the key's stated noise tolerance.

    python scripts/refresh_docs.py --list            # the registry; runs nothing
    python scripts/refresh_docs.py                   # check cheap + standard numbers
    python scripts/refresh_docs.py --tier cheap      # only the seconds-long ones
    python scripts/refresh_docs.py --demo --write    # after a new demo release
    python scripts/refresh_docs.py --only mdl_1m --write
    python scripts/refresh_docs.py --results runs/docs     # keep every producer's JSON
    python scripts/refresh_docs.py --results runs/docs --reuse --write  # write from it

It exits non-zero when a documented number drifted beyond its tolerance, a
marker names no registry key, or a registry key has no marker.  With
``--write`` every number of every producer that ran is replaced by the new
measurement (so a table row never mixes runs) and the exit status is zero
unless a producer failed.  Timings are noisy on a shared machine: run it
under ``nice`` and read the load it records next to each timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docs_registry import NUMBERS, PRODUCERS, Number  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--n:(?P<key>[\w.\-]+)-->(?P<text>.*?)<!--/n-->")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
NUMBER_TEXT = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
TIERS = {"cheap": ("cheap",), "standard": ("cheap", "standard"), "all": None}


@dataclass(frozen=True)
class Marker:
    """One marked number in one docs file."""

    path: Path
    key: str
    text: str
    line: int


def find_markers(paths: list[Path]) -> list[Marker]:
    """Every marked number in ``paths``, in file and line order.

    Markers inside fenced code blocks are examples and are skipped.
    """
    found = []
    for path in paths:
        content = path.read_text()
        fences = [m.span() for m in FENCE.finditer(content)]
        for match in MARKER.finditer(content):
            if any(start <= match.start() < end for start, end in fences):
                continue  # an example of the convention, not a number
            line = content.count("\n", 0, match.start()) + 1
            found.append(Marker(path, match["key"], match["text"], line))
    return found


def parse_number(text: str) -> float:
    """The first number in a documented text (``**1,226.2 s**`` -> 1226.2)."""
    match = NUMBER_TEXT.search(text)
    if match is None:
        raise ValueError(f"no number in documented text {text!r}")
    return float(match.group().replace(",", ""))


def rewrite(content: str, texts: dict[str, str]) -> str:
    """``content`` with the text of every marker whose key is in ``texts`` replaced."""

    fences = [m.span() for m in FENCE.finditer(content)]

    def replace(match: re.Match) -> str:
        key = match["key"]
        if key not in texts or any(a <= match.start() < b for a, b in fences):
            return match.group()
        return f"<!--n:{key}-->{texts[key]}<!--/n-->"

    return MARKER.sub(replace, content)


def docs_files(root: Path) -> list[Path]:
    """The Markdown files whose numbers are checked: docs/ and the README."""
    return sorted((root / "docs").rglob("*.md")) + [root / "README.md"]


def structure_problems(markers: list[Marker]) -> list[str]:
    """Markers without a registry key, and registry keys without a marker."""
    problems = [
        f"{m.path.relative_to(ROOT)}:{m.line}: marker {m.key!r} is not in the registry"
        for m in markers
        if m.key not in NUMBERS
    ]
    marked = {m.key for m in markers}
    problems += [
        f"registry key {key!r} ({number.producer}) has no marker in the docs"
        for key, number in NUMBERS.items()
        if key not in marked
    ]
    return problems


def drift(number: Number, documented: str, measured: float) -> str | None:
    """Why a documented text is outside the number's tolerance of ``measured``."""
    if number.tolerance is None:  # context (load, date, range): rewritten, not checked
        return None
    value = parse_number(documented)
    if number.tolerance.accepts(value, measured):
        return None
    return (
        f"documented {documented!r}, measured {number.format(measured)!r} "
        f"(tolerance {number.tolerance.describe()}: {number.noise})"
    )


def selected_producers(args, markers: list[Marker]) -> list[str]:
    """The producers to run: those behind the markers, filtered by the options."""
    wanted = {NUMBERS[m.key].producer for m in markers if m.key in NUMBERS}
    tiers = TIERS[args.tier]
    names = []
    for name, producer in PRODUCERS.items():
        if name not in wanted:
            continue
        if args.only and name not in args.only:
            continue
        if not args.only and tiers is not None and producer.tier not in tiers:
            continue
        if args.demo and not producer.demo:
            continue
        names.append(name)
    return names


def produce(name: str, results: Path | None, reuse: bool) -> dict:
    """Run one producer (or, with ``reuse``, read its saved result); save it."""
    saved = results / f"{name}.json" if results else None
    if reuse and saved is not None and saved.exists():
        print(f"reusing {saved} for {name}", flush=True)
        return json.loads(saved.read_text())
    producer = PRODUCERS[name]
    print(f"running {name}: {producer.command}", flush=True)
    with LoadSampler() as load:
        result = producer.run()
    result.setdefault("load", (min(load.samples), max(load.samples)))
    result.setdefault("date", datetime.now(timezone.utc).date().isoformat())
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(result, indent=2) + "\n")
    return result


class LoadSampler:
    """The 1-minute load average, sampled every 5 s while a producer runs."""

    def __enter__(self):
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(5.0):
            self.samples.append(os.getloadavg()[0])

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def list_registry() -> None:
    """Print every producer and its numbers."""
    for name, producer in PRODUCERS.items():
        demo = ", depends on the demo release" if producer.demo else ""
        print(f"{name} [{producer.tier}{demo}]: {producer.command}")
        for key, number in NUMBERS.items():
            if number.producer == name:
                tolerance = (
                    number.tolerance.describe() if number.tolerance else "context"
                )
                print(f"    {key}: {tolerance}")


def main(argv: list[str] | None = None) -> int:
    """Check (or with ``--write`` update) the documented numbers; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update the docs in place")
    parser.add_argument(
        "--tier",
        choices=list(TIERS),
        default="standard",
        help="cheap: seconds; standard (default): minutes; all: also the long benches",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="PRODUCER", help="run only these producers"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="only numbers that depend on the demo release",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="save each producer's result in this folder as <producer>.json",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --results: read results saved there instead of re-running",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the registry, run nothing"
    )
    args = parser.parse_args(argv)
    if args.list:
        list_registry()
        return 0
    unknown = set(args.only or ()) - set(PRODUCERS)
    if unknown:
        parser.error(f"unknown producer(s) {sorted(unknown)}; see --list")
    markers = find_markers(docs_files(ROOT))
    problems = structure_problems(markers)
    measured: dict[str, float] = {}
    for name in selected_producers(args, markers):
        try:
            result = produce(name, args.results, args.reuse)
        except Exception as exc:  # one failing producer must not hide the others
            problems.append(f"producer {name} failed: {type(exc).__name__}: {exc}")
            continue
        for key, number in NUMBERS.items():
            if number.producer == name:
                measured[key] = number.value(result)
    texts = {key: NUMBERS[key].format(value) for key, value in measured.items()}
    drifted = []
    for marker in markers:
        if marker.key not in measured:
            continue
        why = drift(NUMBERS[marker.key], marker.text, measured[marker.key])
        where = f"{marker.path.relative_to(ROOT)}:{marker.line} {marker.key}"
        if why:
            drifted.append(f"{where}: {why}")
        elif marker.text != texts[marker.key]:
            how = "context" if NUMBERS[marker.key].tolerance is None else "within noise"
            print(f"{where}: {marker.text!r} -> {texts[marker.key]!r} ({how})")
    if args.write:
        for path in sorted({m.path for m in markers}):
            content = path.read_text()
            updated = rewrite(content, texts)
            if updated != content:
                path.write_text(updated)
                print(f"updated {path.relative_to(ROOT)}")
        drifted = [f"rewritten: {line}" for line in drifted]
        print("\n".join(drifted))
        drifted = []
    else:
        print("\n".join(f"DRIFT {line}" for line in drifted))
    print("\n".join(f"PROBLEM {line}" for line in problems))
    checked = sum(1 for m in markers if m.key in measured)
    print(f"{checked} of {len(markers)} marked numbers re-measured", end="")
    print(f"; {len(drifted)} drifted, {len(problems)} problem(s)")
    return 1 if drifted or problems else 0


if __name__ == "__main__":
    sys.exit(main())
