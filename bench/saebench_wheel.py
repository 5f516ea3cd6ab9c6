"""Import SAEBench's modules from an unpacked ``sae_bench`` wheel.

SAEBench pins numpy<2, so it is not installed here: ``pip download sae-bench
--no-deps``, unzip the wheel, and pass the folder to the benchmarks.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types


def add_wheel(wheel_dir: str) -> None:
    """Put the unpacked wheel first on ``sys.path``.

    SAEBench's ``sae_selection_utils`` (imported by every eval's ``main``)
    imports ``tabulate`` only to print tables; it is not installed here, so
    a stub stands in for it.
    """
    if "tabulate" not in sys.modules:
        stub = types.ModuleType("tabulate")
        stub.tabulate = lambda *args, **kwargs: ""
        stub.__spec__ = importlib.machinery.ModuleSpec("tabulate", None)
        sys.modules["tabulate"] = stub
    if wheel_dir not in sys.path:
        sys.path.insert(0, wheel_dir)
