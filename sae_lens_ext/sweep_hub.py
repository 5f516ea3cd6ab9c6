"""Publish a whole sweep to one Hugging Face repo, in one commit.

The repo (or its ``prefix`` folder) holds the sweep's card, comparison
table and plots at its top, and each SAE's run directory in a folder named
by the SAE (``<slug>/``).  Every SAE folder of every run loads back by name
with ``SAE.from_pretrained(repo_id, "<slug>/<analysis>/<sae>")``.  The
checks, the token handling and the single commit are those of
:func:`sae_lens_ext.push_to_hub`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .hub import (
    CARD,
    PushResult,
    _push,
    check_online,
    check_push_options,
    checked_run,
    content_problem,
    fill_repo_id,
    hub_errors,
    prepare_files,
    resolve_token,
    retry_command,
)

SWEEP_FILE = "sweep.json"


def is_sweep_dir(folder: str | Path) -> bool:
    """Whether ``folder`` is a sweep directory (it holds ``sweep.json``)."""
    return (Path(folder) / SWEEP_FILE).is_file()


def push_sweep(
    sweep_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    prefix: str | None = None,
    allow_incomplete: bool = False,
) -> PushResult:
    """Publish a sweep directory (every SAE's run and the comparison) in one commit.

    A sweep with an SAE whose run is not complete is refused unless
    ``allow_incomplete``; the other options are those of
    :func:`sae_lens_ext.push_to_hub`.
    """
    folder = check_push_options(repo_id, prefix, revision)
    sweep_dir = Path(sweep_dir)
    record = json.loads((sweep_dir / SWEEP_FILE).read_text())
    runs = sweep_runs(sweep_dir, record, allow_incomplete)
    top = top_files(sweep_dir)
    check_online()
    token = resolve_token(token)
    card = fill_repo_id((sweep_dir / CARD).read_text(), repo_id, folder)
    local = prepare_files(sweep_dir, top, card, folder, token)
    for slug, (run_dir, files) in runs.items():
        where = f"{folder}/{slug}" if folder else slug
        run_card = fill_repo_id((run_dir / CARD).read_text(), repo_id, where)
        local += prepare_files(run_dir, files, run_card, where, token)
    message = commit_message or (
        f"Publish sae-lens-ext sweep {sweep_dir.resolve().name}: "
        f"{len(runs)} SAEs of {record['settings']['release']}"
    )
    retry = retry_command(sweep_dir, repo_id, folder, revision, private)
    with hub_errors(sweep_dir, repo_id, retry, token):
        return _push(local, card, repo_id, folder, token, private, revision, message)


def sweep_runs(sweep_dir: Path, record: dict, allow_incomplete: bool) -> dict:
    """``{slug: (run_dir, files)}`` of every SAE, each checked like a single run."""
    runs, missing = {}, []
    for sae_id, entry in record.get("saes", {}).items():
        run_dir = sweep_dir / entry["slug"]
        if not (run_dir / "summary.json").is_file():
            missing.append(sae_id)
            continue
        _, files = checked_run(run_dir, allow_incomplete)
        runs[entry["slug"]] = (run_dir, files)
    if missing and not allow_incomplete:
        raise ValueError(
            f"{sweep_dir}: the sweep has no run yet for {', '.join(missing)}; rerun "
            "the sweep (it resumes), or pass --allow-incomplete to publish the rest"
        )
    return runs


def top_files(sweep_dir: Path) -> dict[str, Path]:
    """The sweep's own files (card, sweep.json, comparison table and plots)."""
    files, problems = {}, []
    for path in sorted(sweep_dir.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        problem = content_problem(path)
        if problem:
            problems.append(f"{path.name} ({problem})")
        else:
            files[path.name] = path
    if problems:
        raise ValueError(
            f"refusing to publish {sweep_dir}: remove or convert these files and "
            "push again:\n  " + "\n  ".join(problems)
        )
    return files
