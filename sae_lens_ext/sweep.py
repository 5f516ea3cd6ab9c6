"""``sae_lens_ext.sweep``: every SAE of a release, one model pass per batch per group.

The sweep directory holds one ordinary run directory per SAE (``<slug>/``,
the SAE id made folder-safe), ``sweep.json`` (the settings, their key and
every SAE's status), the comparison table and plots, and a model card.
A rerun with the same settings skips the SAEs whose run completed and
retries the others; different settings are refused unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .artifacts import json_safe, write_json
from .errors import RunError, RunInterrupted
from .plugins import get_registry
from .runner import DEFAULT_N_TOKENS, default_release, package_version
from .sweep_executors import check_executor, run_local, run_ray, with_device
from .sweep_group import analysis_plan, failure_entry
from .sweep_plan import (
    UNLOADABLE,
    SweepSAE,
    check_slugs,
    default_budget_bytes,
    describe_sae,
    plan_groups,
    select_sae_ids,
)
from .validation import check_run_options

SWEEP_FILE = "sweep.json"
# Settings that change results; a rerun must match them to resume.
KEY_FIELDS = ("release", "plugins", "config", "dataset", "n_tokens", "batch_size")
KEY_FIELDS += ("seed", "positions", "model")


@dataclass
class SweepOutput:
    """What ``sweep`` returns: the folder, the comparison and each SAE's status."""

    sweep_dir: Path
    comparison: pd.DataFrame
    entries: dict[str, dict] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def failures(self) -> dict[str, str]:
        """``{sae_id: error}`` of the SAEs whose run did not complete."""
        return {
            sae_id: entry.get("error", entry["status"])
            for sae_id, entry in self.entries.items()
            if entry["status"] != "complete"
        }


def sweep(
    release: str | None = None,
    sae_ids: str | list[str] | None = None,
    *,
    plugins: str | list[str] | None = None,
    config: dict[str, dict[str, Any]] | None = None,
    dataset: str | Path | torch.Tensor | None = None,
    n_tokens: int = DEFAULT_N_TOKENS,
    batch_size: int = 32,
    device: str = "auto",
    seed: int = 0,
    positions: str | None = None,
    model=None,
    executor: str = "local",
    ray_address: str | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    memory_budget_gb: float | None = None,
) -> SweepOutput:
    """Run the enabled analyses on many SAEs of a release, sharing model passes.

    ``sae_ids`` is None (every SAE of the release), a list of ids, or a
    string of comma-separated ids and glob patterns (``"resid0-topk-*"``).
    SAEs are grouped by model (and context size and BOS); each group's
    batches go through the model once, capturing every hook it reads, and
    each SAE's analyses accumulate their own statistics.  Groups whose
    estimated memory exceeds ``memory_budget_gb`` (default: half the free
    memory) are split.  ``executor`` is ``"local"`` or ``"ray"`` (one task
    per group; ``ray_address`` joins an existing cluster).  ``device`` is
    ``"auto"`` (cuda when there is a GPU), ``"cpu"`` or ``"cuda"``.
    ``model`` (a name like ``--model``, or a loaded model) replaces the
    model named by the SAEs' metadata.  The
    other options are those of :func:`sae_lens_ext.run`.  One SAE's
    failure is recorded in ``sweep.json`` and its run directory; the
    others go on (see ``SweepOutput.failures``).
    """
    started = time.perf_counter()
    check_run_options(
        n_tokens=n_tokens,
        batch_size=batch_size,
        device="cpu" if device == "auto" else device,
    )
    check_executor(executor, ray_address)
    release = release or default_release(get_registry())
    settings = {
        "release": release,
        "plugins": plugins,
        "config": config or {},
        "dataset": dataset,
        "n_tokens": n_tokens,
        "batch_size": batch_size,
        "device": device,
        "seed": seed,
        "positions": positions,
        "model": model,
    }
    plan = analysis_plan(settings)  # unknown plugins or options fail here
    settings["plugins"] = plan.enabled
    settings["key"] = settings_key(settings, plan)
    ids = select_sae_ids(release, sae_ids)
    sweep_dir = Path(out_dir) if out_dir is not None else default_sweep_dir(release)
    previous = check_sweep_dir(sweep_dir, settings["key"], overwrite)
    check_slugs(ids)
    specs, entries = [], dict(previous.get("saes", {}))
    for sae_id in ids:
        try:
            specs.append(describe_sae(release, sae_id))
        except Exception as exc:  # recorded; the other SAEs go on
            specs.append(SweepSAE.unloadable(release, sae_id))
            entries[sae_id] = failure_entry(specs[-1], "loading the SAE", exc)
    finished = [
        s.sae_id for s in specs if not overwrite and is_complete(sweep_dir / s.slug)
    ]
    todo = [
        s for s in specs if s.sae_id not in finished and s.architecture != UNLOADABLE
    ]
    budget = (
        int(memory_budget_gb * (1 << 30))
        if memory_budget_gb
        else default_budget_bytes(with_device(settings)["device"])
    )
    groups = plan_groups(todo, batch_size * (specs[0].context_size or 128), budget)
    for sae_id in finished:
        entries[sae_id] = {**entries.get(sae_id, {}), "status": "complete"}
    record = sweep_record(settings, specs, entries, groups, started)
    write_json(sweep_dir / SWEEP_FILE, record)

    bar = tqdm(total=len(todo), unit="SAE", desc=f"sweep ({executor})")

    def on_done(done: dict) -> None:
        entries.update(done)
        record.update(sweep_record(settings, specs, entries, groups, started))
        write_json(sweep_dir / SWEEP_FILE, record)
        bar.update(len(done))

    try:
        if executor == "ray":
            run_ray(groups, settings, sweep_dir, on_done, ray_address)
        else:
            run_local(groups, settings, sweep_dir, on_done)
    except KeyboardInterrupt:
        record["status"] = "interrupted"
        write_json(sweep_dir / SWEEP_FILE, record)
        raise RunInterrupted(
            f"interrupted; the finished SAEs' runs are kept in {sweep_dir}: run the "
            "same command again to resume with the others"
        ) from None
    finally:
        bar.close()
    from .comparison import write_comparison

    table = write_comparison(sweep_dir, specs, entries)
    record.update(sweep_record(settings, specs, entries, groups, started))
    record["status"] = (
        "complete"
        if all(entries.get(s.sae_id, {}).get("status") == "complete" for s in specs)
        else "failed"
    )
    write_json(sweep_dir / SWEEP_FILE, record)
    return SweepOutput(
        sweep_dir=sweep_dir,
        comparison=table,
        entries={s.sae_id: entries[s.sae_id] for s in specs if s.sae_id in entries},
        groups=[[s.sae_id for s in g] for g in groups],
        skipped=finished,
    )


def settings_key(settings: dict, plan) -> str:
    """A short hash of the settings that change results."""
    import dataclasses

    fields = {k: settings[k] for k in KEY_FIELDS}
    fields["dataset"] = dataset_text(settings["dataset"])
    fields["model"] = model_text(settings["model"])
    fields["config"] = {n: dataclasses.asdict(c) for n, c in plan.configs.items()}
    text = json.dumps(json_safe(fields), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_text(dataset) -> str | None:
    """The dataset as text; a tensor by its shape and a hash of its content."""
    if isinstance(dataset, torch.Tensor):
        digest = hashlib.sha256(dataset.cpu().contiguous().numpy().tobytes())
        return f"tensor{list(dataset.shape)}:{digest.hexdigest()[:16]}"
    return None if dataset is None else str(dataset)


def model_text(model) -> str | None:
    """The model as text: its name, or a loaded model's ``cfg.model_name``."""
    if model is None or isinstance(model, str):
        return model
    return str(getattr(model.cfg, "model_name", type(model).__name__))


def check_sweep_dir(sweep_dir: Path, key: str, overwrite: bool) -> dict:
    """The earlier ``sweep.json`` to resume from; refuse mixing settings or runs."""
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise RunError(f"--out {sweep_dir} is a file; choose a folder for the sweep")
    path = sweep_dir / SWEEP_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("key") != key and not overwrite:
            raise RunError(
                f"{sweep_dir} holds a sweep run with other settings (plugins, "
                "options, dataset, tokens, positions or seed); rerun it with the same "
                "settings to resume, choose another --out, or pass --overwrite to "
                "run every SAE again with the new settings."
            )
        return previous if previous.get("key") == key else {}
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
        raise RunError(
            f"{sweep_dir} already holds files but no {SWEEP_FILE}, so it is not a "
            "sweep directory; choose another --out or empty the folder yourself."
        )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return {}


def is_complete(run_dir: Path) -> bool:
    """Whether a run directory holds a complete run."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return summary.get("status") == "complete"


def sweep_record(settings, specs, entries, groups, started) -> dict:
    """The content of ``sweep.json``."""
    return {
        "sae_lens_ext_version": package_version("sae-lens-ext"),
        "status": "running",
        "key": settings["key"],
        "settings": {
            **{k: settings[k] for k in (*KEY_FIELDS, "device")},
            "dataset": dataset_text(settings["dataset"]),
            "model": model_text(settings["model"]),
        },
        "saes": {
            s.sae_id: {
                "slug": s.slug,
                "hook_name": s.hook_name,
                "d_sae": s.d_sae,
                **entries.get(s.sae_id, {"status": "pending"}),
            }
            for s in specs
        },
        "groups": [[s.sae_id for s in group] for group in groups],
        "duration_s": round(time.perf_counter() - started, 2),
    }


def default_sweep_dir(release: str) -> Path:
    """``runs/sweep-<release>-<timestamp>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", release).strip("-")
    return Path("runs") / f"sweep-{slug}-{stamp}"
