"""Analyses are isolated from each other: one failing never loses the others.

An exception in an analysis's ``__init__``, ``update`` or ``finish`` fails
that analysis alone; its plugin, the step and the traceback go into
``summary.json`` and every other analysis runs on.  A failure of the
activation source itself (the model, the cache, NaN activations) fails the
analyses that consume the pass, and those that need only weights still
finish.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable

from .shared_pass import HookActivations, run_shared_pass


class AnalysisFailures:
    """The analyses that failed so far, with where and why."""

    def __init__(self, plugin_of: Callable[[str], str]):
        self.plugin_of = plugin_of
        self.entries: dict[str, dict] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def record(self, name: str, step: str, exc: BaseException) -> None:
        """Note that analysis ``name`` failed in ``step`` (its first failure counts)."""
        if name in self.entries:
            return
        self.entries[name] = {
            "error": f"{type(exc).__name__}: {exc}",
            "failed_in": step,
            "traceback": "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)
            ),
        }

    def message(self, name: str) -> str:
        """One line naming the analysis, its plugin, the step and the error."""
        entry = self.entries[name]
        return (
            f"analysis {name!r} (plugin {self.plugin_of(name)!r}) failed in "
            f"{entry['failed_in']}: {entry['error']}"
        )

    def summary(self) -> dict[str, str]:
        """Map analysis name -> its one-line failure message."""
        return {name: self.message(name) for name in self.entries}


def instantiate(classes: dict, configs: dict, make_context, failures) -> dict:
    """Build each analysis; one whose constructor raises is recorded as failed."""
    analyses = {}
    for name, cls in classes.items():
        try:
            analyses[name] = cls(configs[name], make_context(name))
        except Exception as exc:
            failures.record(name, "__init__()", exc)
    return analyses


def isolated_pass(
    sae,
    streaming: dict,
    activations: Iterable[HookActivations],
    failures: AnalysisFailures,
    *,
    hook_name: str,
    total_rows: int | None,
) -> int:
    """Run the shared pass; record failing analyses instead of stopping the run.

    Returns the number of rows delivered (0 when the source failed).
    """
    names = {id(analysis): name for name, analysis in streaming.items()}

    def on_error(analysis, exc: Exception) -> None:
        failures.record(names[id(analysis)], "update()", exc)

    try:
        return run_shared_pass(
            sae,
            list(streaming.values()),
            activations,
            hook_name=hook_name,
            total_rows=total_rows,
            on_error=on_error,
        )
    except Exception as exc:
        for name in streaming:
            failures.record(name, "the shared activation pass", exc)
        return 0
