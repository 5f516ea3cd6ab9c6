"""The run directory: refuse to mix runs, and ``--overwrite`` without losses.

A fresh (missing or empty) ``--out`` is written in place.  ``--overwrite``
of an earlier run writes the new run into a hidden sibling folder and swaps
it in only when the run completes, so the folder then holds the new run
alone, and a run that fails or is interrupted leaves the earlier run as it
was (the new run's files stay in the sibling, which the message names).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from .errors import RunError

SUMMARY = "summary.json"


class RunDirectory:
    """Where a run writes (``path``) and where it ends up (``final``)."""

    def __init__(self, final: Path, path: Path):
        self.final = final
        self.path = path

    @property
    def replaces(self) -> bool:
        """Whether this run replaces an earlier run on success."""
        return self.path != self.final

    def publish(self) -> Path:
        """Put the finished run at ``final`` (swapping out an earlier run)."""
        if not self.replaces:
            return self.final
        old = Path(
            tempfile.mkdtemp(prefix=f".{self.final.name}.old-", dir=self.final.parent)
        )
        os.replace(self.final, old / "run")
        try:
            os.replace(self.path, self.final)
        except OSError:
            os.replace(old / "run", self.final)
            raise
        shutil.rmtree(old, ignore_errors=True)
        self.path = self.final
        return self.final

    def kept_note(self) -> str:
        """Where things are after a failure or interruption."""
        if not self.replaces:
            return f"finished analyses kept in {self.path}"
        return (
            f"finished analyses kept in {self.path}; the earlier run in "
            f"{self.final} is unchanged"
        )


def default_out_dir(release: str, sae_id: str) -> Path:
    """``runs/<release>-<sae_id>-<timestamp>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{release}-{sae_id}").strip("-")
    return Path("runs") / f"{slug}-{stamp}"


def prepare_run_dir(
    out_dir, release: str, sae_id: str, overwrite: bool
) -> RunDirectory:
    """Choose where this run writes, refusing to mix runs in a non-empty folder."""
    final = Path(out_dir) if out_dir is not None else default_out_dir(release, sae_id)
    if final.exists() and not final.is_dir():
        raise RunError(f"--out {final} is a file; choose a folder for the run")
    if not (final.is_dir() and any(final.iterdir())):
        final.mkdir(parents=True, exist_ok=True)
        return RunDirectory(final, final)
    if not overwrite:
        raise RunError(
            f"{final} already holds files; choose another --out, or pass "
            "--overwrite to replace the earlier run in it."
        )
    if not (final / SUMMARY).is_file():
        raise RunError(
            f"--overwrite refused: {final} holds files but is not a sae-lens-ext run "
            f"directory (no {SUMMARY}), so nothing there is replaced; choose another "
            "--out or empty the folder yourself."
        )
    work = tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent)
    return RunDirectory(final, Path(work))
