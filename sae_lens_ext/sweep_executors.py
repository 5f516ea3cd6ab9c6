"""Executors of a sweep's groups: in this process, or as Ray tasks.

Both run :func:`~sae_lens_ext.sweep_group.run_group` on each group and end
with the same files in the sweep directory.  The local executor writes
there directly.  A Ray task writes into a scratch folder on its worker and
returns the finished run directories as bytes; the driver installs them
(so a cluster needs no shared filesystem).  Ray schedules the tasks: a task
asks for one GPU when the cluster has GPUs, and for an equal share of the
cluster's CPUs otherwise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import RunError
from .sweep_group import failure_entry, run_group
from .sweep_plan import SweepSAE

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'sae-lens-ext[ray]'"


def check_executor(executor: str, ray_address: str | None) -> None:
    """Refuse an unknown executor, or Ray when it is not installed, before any work."""
    if executor not in EXECUTORS:
        raise RunError(
            f"unknown executor {executor!r}; choose --executor local or --executor ray"
        )
    if ray_address and executor != "ray":
        raise RunError("--ray-address needs --executor ray")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise RunError(
                f"--executor ray needs the ray package: {RAY_INSTALL}"
            ) from exc


def run_local(
    groups: list[list[SweepSAE]],
    settings: dict,
    out_dir: Path,
    on_done: Callable[[dict], None],
) -> None:
    """Run the groups one after another in this process."""
    for group in groups:
        on_done(run_group(group, with_device(settings), out_dir))


def with_device(settings: dict, has_gpu: bool | None = None) -> dict:
    """Settings with ``device`` resolved: ``auto`` is cuda when there is a GPU."""
    if settings["device"] != "auto":
        return settings
    if has_gpu is None:
        import torch

        has_gpu = torch.cuda.is_available()
    return {**settings, "device": "cuda" if has_gpu else "cpu"}


def run_ray(
    groups: list[list[SweepSAE]],
    settings: dict,
    out_dir: Path,
    on_done: Callable[[dict], None],
    address: str | None = None,
) -> None:
    """Run each group as one Ray task; install each task's run directories here.

    Joins the cluster at ``address`` (``auto`` or ``ray://host:10001``), or
    the one already initialised in this process, or starts a local one.
    A task that dies (worker lost, out of memory) fails its group's SAEs.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0) >= 1 and settings["device"] in ("auto", "cuda")
    cpus = max(1, int(resources.get("CPU", 1)) // max(1, len(groups)))
    task = ray.remote(_group_task).options(
        num_gpus=1 if gpus else 0, num_cpus=cpus, max_retries=0
    )
    pending = {
        task.remote(group, with_device(settings, gpus), cpus): group for group in groups
    }
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        group = pending.pop(done[0])
        try:
            entries, packed = ray.get(done[0])
        except Exception as exc:
            on_done({s.sae_id: failure_entry(s, "its Ray task", exc) for s in group})
            continue
        for slug, files in packed.items():
            install_run_dir(files, out_dir / slug)
        on_done(entries)


def _group_task(group: list[SweepSAE], settings: dict, cpus: int):
    """A Ray task: run one group in a scratch folder, return entries and files."""
    from .threads import thread_limit

    scratch = Path(tempfile.mkdtemp(prefix="sae-lens-ext-sweep-"))
    try:
        with thread_limit(cpus):
            entries = run_group(group, settings, scratch)
        packed = {
            spec.slug: pack_folder(scratch / spec.slug)
            for spec in group
            if (scratch / spec.slug / "summary.json").is_file()
        }
        return entries, packed
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pack_folder(folder: Path) -> dict[str, bytes]:
    """Every file of a folder as ``{relative posix path: bytes}``."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def install_run_dir(files: dict[str, bytes], final: Path) -> None:
    """Write a run directory from packed files, replacing an earlier one whole."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent))
    for rel, data in files.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / "run")
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
