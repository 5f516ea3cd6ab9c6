"""One SAE of a sweep: an ordinary run directory fed by the group's shared pass.

A :class:`SAEJob` is ``sae_lens_ext.run`` cut at the pass: ``start`` writes
the run directory's ``summary.json`` and builds the analyses, ``feed``
takes one batch of the group's pass, ``finish`` finishes the analyses and
writes everything exactly as a single run does.  Failures stay inside the
job: an analysis failing fails that analysis, activations that do not fit
fail this SAE's pass, and nothing here stops the other SAEs of the group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import write_json
from .errors import RunError
from .isolation import AnalysisFailures
from .run_dir import prepare_run_dir
from .runner import (
    RunOutput,
    close_run,
    finish_analyses,
    new_summary,
    skipped_entries,
    start_analyses,
)
from .saebench import write_saebench_outputs
from .shared_pass import SAEFeed
from .weights_only import NO_MODEL_METADATA, split_weights_only

PASS_STEP = "the shared activation pass"


@dataclass
class AnalysisPlan:
    """The analyses every SAE of a sweep runs, resolved once."""

    registry: Any
    enabled: list[str]
    classes: dict
    configs: dict
    warnings: list[str] = field(default_factory=list)


class SAEJob:
    """One SAE's run inside a sweep group."""

    def __init__(self, sae, release: str, sae_id: str, plan: AnalysisPlan):
        self.sae = sae
        self.release = release
        self.sae_id = sae_id
        self.plan = plan
        self.hook_name = sae.cfg.metadata.hook_name
        self.feeder: SAEFeed | None = None
        self.streaming: dict = {}

    def start(
        self,
        out_dir: Path,
        *,
        model,
        positions,
        dataset_label: str,
        settings: dict,
        extra_warnings: list[str],
        overwrite: bool,
    ) -> None:
        """Write the run's first ``summary.json`` and build its analyses."""
        self.started = time.perf_counter()
        torch.manual_seed(settings["seed"])
        plan = self.plan
        classes, skipped = plan.classes, {}
        if model is None:
            classes, skipped = split_weights_only(classes, NO_MODEL_METADATA)
        if model is not None and not self.hook_name:
            raise RunError(
                "the SAE's cfg.json metadata has no hook_name, so the shared pass "
                "does not know where to read activations; set metadata.hook_name"
            )
        self.target = prepare_run_dir(out_dir, self.release, self.sae_id, overwrite)
        self.summary = new_summary(
            release=self.release,
            sae_id=self.sae_id,
            metadata=self.sae.cfg.metadata,
            dataset=dataset_label,
            positions=positions,
            weights_only=model is None,
            seed=settings["seed"],
            device=settings["device"],
            enabled=plan.enabled,
            configs=plan.configs,
            run_warnings=plan.warnings + extra_warnings,
            analyses=skipped_entries(skipped, plan.registry),
        )
        self.summary["sweep"] = settings["key"]
        write_json(self.target.path / "summary.json", self.summary)
        self.output = RunOutput(run_dir=self.target.path, summary=self.summary)
        self.failed = AnalysisFailures(plan.registry.plugin_of)
        self.model = model
        self.analyses = start_analyses(
            classes,
            plan.configs,
            self.failed,
            self.summary,
            self.sae,
            model,
            self.target.path,
        )
        self.streaming = {n: a for n, a in self.analyses.items() if a.needs_pass()}
        if self.streaming and model is not None:
            names = {id(a): n for n, a in self.streaming.items()}
            self.feeder = SAEFeed(
                self.sae,
                list(self.streaming.values()),
                self.hook_name,
                on_error=lambda a, exc: self.failed.record(
                    names[id(a)], "update()", exc
                ),
            )

    @property
    def live(self) -> bool:
        """Whether this SAE still takes batches of the pass."""
        return self.feeder is not None and bool(self.feeder.live)

    def feed(self, hook_acts) -> None:
        """Hand one batch of the group's pass to this SAE; a bad batch fails its pass."""
        if not self.live:
            return
        try:
            self.feeder.feed(hook_acts)
        except Exception as exc:
            self.fail_pass(exc)

    def fail_pass(self, exc: Exception) -> None:
        """The pass failed for this SAE: every analysis that consumes it fails."""
        for name in self.streaming:
            self.failed.record(name, PASS_STEP, exc)
        if self.feeder is not None:
            self.feeder.live = []

    def finish(self) -> RunOutput:
        """Finish the analyses and write the run; RunError when some failed."""
        summary, run_dir = self.summary, self.target.path
        torch.manual_seed(summary["seed"])  # as a single run's analyses see it
        try:
            if self.feeder is not None:
                try:
                    summary["n_tokens"] = self.feeder.check_delivered()
                except Exception as exc:
                    self.fail_pass(exc)
            finish_analyses(
                self.analyses,
                self.plan.registry,
                run_dir,
                summary,
                self.output,
                self.failed,
            )
            write_saebench_outputs(
                self.plan.registry,
                summary,
                run_dir,
                self.output.results,
                sae=self.sae,
                model=self.model,
            )
        except BaseException as exc:
            self.mark("failed", f"{type(exc).__name__}: {exc}")
            raise
        close_run(
            self.plan.registry,
            summary,
            self.target,
            self.output,
            self.failed,
            self.started,
        )
        return self.output

    def mark(self, status: str, error: str) -> None:
        """Record an interrupted or failed run in its ``summary.json``."""
        self.summary.update(status=status, error=error)
        write_json(self.target.path / "summary.json", self.summary)
