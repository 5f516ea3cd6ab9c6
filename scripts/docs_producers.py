"""The producers behind documented numbers: commands run from the repository root.

Each returns a JSON-ready dict that ``scripts/docs_registry.py`` reads numbers from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# the console script, with this interpreter (and so this PYTHONPATH)
CLI = [sys.executable, "-c", "from sae_lens_ext.cli import main; main()"]


def run_checked(command: list[str], what: str) -> None:
    """Run ``command`` from the repository root; raise with its stderr if it fails."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")


def json_command(*args: str) -> Callable[[], dict]:
    """A producer that runs ``python ARGS --json FILE`` and reads FILE back."""

    def run() -> dict:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "result.json"
            run_checked([sys.executable, *args, "--json", str(out)], " ".join(args))
            return json.loads(out.read_text())

    return run


def mdl_compare() -> dict:
    """The MDL worked example: ``sae-lens-ext mdl-compare`` on the four demo SAEs."""
    with tempfile.TemporaryDirectory() as folder:
        run_checked([*CLI, *MDL_COMPARE_ARGS, "--out", folder], "mdl-compare")
        table = pd.read_csv(Path(folder) / "comparison.csv").set_index("sae")
    return {"table": json.loads(table.to_json(orient="index"))}


def demo_run() -> dict:
    """The default demo run: ``sae-lens-ext run``; every analysis's metrics."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        run_checked([*CLI, "run", "--out", str(out)], "sae-lens-ext run")
        summary = json.loads((out / "summary.json").read_text())
    return {
        "metrics": {
            name: entry.get("metrics", {})
            for name, entry in summary["analyses"].items()
        },
        "duration_s": summary["duration_s"],
    }


def demo_release_record() -> dict:
    """The shipped demo release's own record: ``release.json`` and its size on disk.

    Every number in it was measured by ``scripts/build_demo_release.py`` in the
    build that wrote the shipped files, so the docs quote it rather than re-run
    a 20-minute build; ``tests/test_demo_release_v2.py`` re-measures the targets.
    """
    folder = ROOT / "sae_lens_ext" / "demo_release"
    record = json.loads((folder / "release.json").read_text())
    record["size_bytes"] = sum(
        path.stat().st_size for path in folder.rglob("*") if path.is_file()
    )
    return record


MDL_COMPARE_ARGS = [
    "mdl-compare",
    "sae-lens-ext/demo",
    "resid0-topk-512",
    "resid0-topk-1024",
    "resid0-topk-2048",
    "resid0-relu-1024",
    "--n-tokens",
    "65536",
]
