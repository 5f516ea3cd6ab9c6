"""GPU check: the demo run, a sweep and every bench on CUDA, into one JSON.

Run it whenever a GPU is at hand and record the results in
docs/benchmarks.md:

    python bench/gpu_check.py                       # writes gpu_check.json
    python bench/gpu_check.py --out results.json --n-tokens 16384

It stops at once with exit status 2, before anything runs, when torch sees
no CUDA device.  Each part
is timed on its own and one failing part does not stop the others (its error
is recorded and the exit status is 1):

- ``demo``: ``sae-lens-ext run`` with every plugin on the demo release,
  ``--device cuda``, then the same on the CPU; each analysis's status and
  scalar metrics on both, and the largest relative difference per analysis;
- ``sweep``: ``sae_lens_ext.sweep`` over the demo release's SAEs on CUDA,
  when the installed sae-lens-ext has it (otherwise recorded as absent);
- ``benches``: every ``bench/bench_*.py`` in a subprocess, with
  ``--device cuda`` where the bench takes it; a bench without that option
  runs on the CPU only and is recorded as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
DEMO_RELEASE = "sae-lens-ext/demo"
OUTPUT_TAIL = 4000


def require_cuda() -> None:
    """Exit with a clear message (status 2) when no CUDA device is visible."""
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU build of torch)"
        print(
            "gpu_check needs a CUDA GPU: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {build}). Install a CUDA build "
            "of torch on a machine with a GPU and rerun; nothing was measured.",
            file=sys.stderr,
        )
        sys.exit(2)


def timed(part):
    """Run ``part()``; return its result with wall seconds, or the error."""
    started = time.perf_counter()
    try:
        result = part()
        status = "ok"
    except Exception as exc:  # recorded, and the other parts go on
        result, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
    return {"status": status, "seconds": round(time.perf_counter() - started, 2)} | (
        result or {}
    )


def scalar_metrics(summary: dict) -> dict:
    """Per analysis: status and its finite scalar metrics."""
    found = {}
    for name, entry in summary.get("analyses", {}).items():
        metrics = {
            key: value
            for key, value in entry.get("metrics", {}).items()
            if isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
        status = "error" if "error" in entry else entry.get("skipped", "ok")
        found[name] = {"status": status, "metrics": metrics}
    return found


def largest_differences(cuda: dict, cpu: dict) -> dict:
    """Per analysis, the largest relative CUDA-vs-CPU difference of a metric."""
    differences = {}
    for name, entry in cuda.items():
        theirs = cpu.get(name, {}).get("metrics", {})
        gaps = [
            (abs(value - theirs[key]) / max(abs(theirs[key]), 1e-12), key)
            for key, value in entry["metrics"].items()
            if key in theirs and not key.endswith("seconds")
        ]
        if gaps:
            gap, key = max(gaps)
            differences[name] = {"metric": key, "relative_difference": gap}
    return differences


def demo_runs(n_tokens: int, out_dir: Path) -> dict:
    """Every plugin on the demo release on CUDA, then on the CPU."""
    import sae_lens_ext
    from sae_lens_ext.errors import RunError

    runs = {}
    for device in ("cuda", "cpu"):
        started = time.perf_counter()
        try:
            output = sae_lens_ext.run(
                DEMO_RELEASE,
                n_tokens=n_tokens,
                device=device,
                out_dir=out_dir / f"demo-{device}",
                overwrite=True,
            )
            summary = output.summary
        except RunError as exc:  # some analyses failed: still read
            summary = json.loads((out_dir / f"demo-{device}/summary.json").read_text())
            summary["run_error"] = str(exc)
        runs[device] = {
            "seconds": round(time.perf_counter() - started, 2),
            "status": summary.get("status"),
            "analyses": scalar_metrics(summary),
            **({"run_error": summary["run_error"]} if "run_error" in summary else {}),
        }
    runs["largest_differences"] = largest_differences(
        runs["cuda"]["analyses"], runs["cpu"]["analyses"]
    )
    runs["speedup"] = runs["cpu"]["seconds"] / max(runs["cuda"]["seconds"], 1e-9)
    return runs


def sweep_run(n_tokens: int, out_dir: Path) -> dict:
    """``sae_lens_ext.sweep`` of the demo release on CUDA, if it exists."""
    import sae_lens_ext

    sweep = getattr(sae_lens_ext, "sweep", None)
    if sweep is None:
        return {
            "absent": "this sae-lens-ext has no sae_lens_ext.sweep yet; "
            "rerun gpu_check after installing a version with sweeps"
        }
    options = dict(
        plugins=["base", "mdl", "absorption"],
        n_tokens=n_tokens,
        out_dir=out_dir / "sweep",
    )
    if "device" not in inspect.signature(sweep).parameters:
        return {"absent": "sae_lens_ext.sweep takes no device; nothing run on CUDA"}
    result = sweep(DEMO_RELEASE, device="cuda", **options)
    return {"result": str(result)}


def takes_device(bench: Path) -> bool:
    """Whether the bench's ``--help`` lists a ``--device`` option."""
    shown = subprocess.run(
        [sys.executable, str(bench), "--help"], capture_output=True, text=True
    )
    return "--device" in shown.stdout


def run_benches(timeout: float) -> dict:
    """Every ``bench_*.py``, on CUDA where it takes ``--device``."""
    results = {}
    for bench in sorted(BENCH_DIR.glob("bench_*.py")):
        if not takes_device(bench):
            results[bench.name] = {
                "status": "skipped",
                "reason": "no --device option: this bench runs on the CPU only",
            }
            continue
        command = [sys.executable, str(bench), "--device", "cuda"]
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout
            )
            status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
            output = (done.stdout + done.stderr)[-OUTPUT_TAIL:]
        except subprocess.TimeoutExpired as exc:
            status, output = f"timed out after {timeout:g} s", str(exc.stdout)[-2000:]
        results[bench.name] = {
            "status": status,
            "command": " ".join(command[1:]),
            "seconds": round(time.perf_counter() - started, 2),
            "output_tail": output,
        }
    return results


def environment() -> dict:
    """What the numbers were measured on."""
    return {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def main() -> int:
    """Parse options, check for CUDA, run every part, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--n-tokens", type=int, default=65_536)
    parser.add_argument(
        "--bench-timeout", type=float, default=900, help="seconds per bench"
    )
    args = parser.parse_args()
    require_cuda()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report = {
            "environment": environment(),
            "demo": timed(lambda: demo_runs(args.n_tokens, work)),
            "sweep": timed(lambda: sweep_run(args.n_tokens, work)),
            "benches": timed(lambda: {"runs": run_benches(args.bench_timeout)}),
        }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    failed = [
        part for part in ("demo", "sweep", "benches") if report[part]["status"] != "ok"
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
