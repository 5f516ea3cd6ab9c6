"""Errors a run raises, shared by the runner and the run-directory helpers."""

from __future__ import annotations


class RunError(RuntimeError):
    """A run could not start or an analysis failed; the message says what to do."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says where the finished analyses are."""
