"""Write analysis results into a run directory.

Layout of ``<run>/<analysis>/``: ``<table>.parquet`` (and ``<table>.csv``
when small), ``tensors.safetensors``, ``<plot>.png`` and one SAE-Lens folder
per SAE (``cfg.json`` + ``sae_weights.safetensors``).  Files are written
to a temporary name and renamed, so a crash never leaves a half file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .analysis import AnalysisResult

CSV_MAX_ROWS = 20_000


def json_safe(value: Any) -> Any:
    """Make metrics JSON-serialisable: tensors/numpy to numbers, NaN to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n")
    os.replace(tmp, path)


def write_result(result: AnalysisResult, folder: Path, run_dir: Path) -> dict:
    """Write one analysis's result; return its files and SAE folders."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for name, table in result.tables.items():
        path = folder / f"{name}.parquet"
        _atomic(path, lambda tmp, t=table: t.to_parquet(tmp, index=False))
        files.append(path)
        if len(table) <= CSV_MAX_ROWS:
            csv = folder / f"{name}.csv"
            _atomic(csv, lambda tmp, t=table: t.to_csv(tmp, index=False))
            files.append(csv)
    if result.tensors:
        path = folder / "tensors.safetensors"
        tensors = {k: v.detach().cpu().contiguous() for k, v in result.tensors.items()}
        _atomic(path, lambda tmp: save_file(tensors, tmp))
        files.append(path)
    for name, fig in result.plots.items():
        path = folder / f"{name}.png"
        _atomic(path, lambda tmp, f=fig: f.savefig(tmp, dpi=110, format="png"))
        files.append(path)
    sae_folders = []
    for name, sae in result.saes.items():
        sae_dir = folder / name
        sae.save_model(sae_dir)
        sae_folders.append(sae_dir)
        files.extend(p for p in sorted(sae_dir.iterdir()) if p.is_file())
    return {
        "files": [str(p.relative_to(run_dir)) for p in files],
        "saes": [str(p.relative_to(run_dir)) for p in sae_folders],
    }


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
