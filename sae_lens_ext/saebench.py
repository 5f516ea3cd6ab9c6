"""SAEBench-format results beside our own, metric directions, meaningfulness warnings.

SAEBench (adamkarvonen/SAEBench) writes one typed JSON per eval, which
Neuronpedia displays.  Plugins map their results to it through the
``register_saebench_evals`` hook; :func:`write_saebench_outputs` (called once
by the runner after the analyses finish) writes each to
``<run>/saebench/<eval_type_id>.json``, and adds to ``summary.json``:

- ``analyses.<name>.directions``: for every scalar metric, whether higher or
  lower is better (from ``register_metric_directions``);
- ``analyses.<name>.warnings``: when a number is outside the range where it
  means what it seems to (e.g. absorption of a small SAE);
- ``saebench``: which files were written, and why others were not;
- ``preset``: the name of the preset whose settings the run used, if any.

A typed eval output has SAEBench's top-level fields (``eval_type_id``,
``eval_config``, ``eval_id``, ``datetime_epoch_millis``,
``eval_result_metrics``, ``eval_result_details``, ``sae_bench_commit_hash``,
``sae_lens_id``, ``sae_lens_release_id``, ``sae_lens_version``,
``sae_cfg_dict``, ``eval_result_unstructured``).  SAEBench's metric names
hold only quantities computed as SAEBench computes them; our own metrics,
notes and warnings go in the separate ``eval_result_unstructured.sae_lens_ext``
block.  SAEBench did not run the evaluation, so ``sae_bench_commit_hash``
says so instead of naming a commit.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import json_safe, write_json

#: The SAEBench commit whose published schemas the outputs follow.
SAEBENCH_SCHEMA_COMMIT = "8042bb3828c6340da8d12062324e92b2077c571c"
OUTPUT_FOLDER = "saebench"
EXTRA_BLOCK = "sae_lens_ext"
#: Direction codes and how the card and JSON spell them out.
DIRECTIONS = {
    "higher": "higher is better",
    "lower": "lower is better",
    "closer_to_1": "closer to 1 is better",
    "closer_to_0": "closer to 0 is better",
    "none": "not a score",
}
UNSPECIFIED = "unspecified"


class SAEBenchSkip(Exception):
    """SAEBench itself would not report this eval here; the message says why."""


@dataclass
class SAEBenchRun:
    """What a mapping may read about the run besides the analysis's result.

    ``config`` is the analysis's config as a dict (as in ``summary.json``);
    ``base_metrics`` the host ``base`` analysis's metrics when it ran.
    """

    release: str
    sae_id: str
    sae: Any
    model: Any
    seed: int
    config: dict
    summary: dict

    @property
    def model_name(self) -> str:
        """The model's name from the SAE's metadata ("" when unknown)."""
        return str(self.summary.get("model_name") or "")

    @property
    def base_metrics(self) -> dict:
        """Metrics of the host's ``base`` analysis ({} when it did not run)."""
        return self.summary.get("analyses", {}).get("base", {}).get("metrics", {})

    def model_parameters(self) -> int | None:
        """Parameter count of the model, or None when no model was loaded."""
        if self.model is None:
            return None
        return int(sum(p.numel() for p in self.model.parameters()))


@dataclass
class SAEBenchEval:
    """One eval in SAEBench's output format, as a plugin maps its result.

    - ``metrics``: ``eval_result_metrics``, categories of flat metrics with
      SAEBench's names, each computed as SAEBench computes it;
    - ``details``: ``eval_result_details`` (a list of flat records);
    - ``directions``: ``"category.metric" -> direction`` for those metrics;
    - ``extra_metrics`` / ``extra_directions``: our metrics that SAEBench
      does not have, written only to the separate block;
    - ``notes``: how our method differs, which of SAEBench's numbers we
      cannot compute; ``warnings``: why a number may mislead here;
    - ``legacy``: SAEBench's MDL eval writes an untyped dict instead
      (``eval_instance_id``, ``eval_results`` ...); ``legacy_results`` holds
      its ``eval_results`` list.
    """

    eval_type_id: str
    eval_config: dict
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: list[dict] | None = field(default_factory=list)
    directions: dict[str, str] = field(default_factory=dict)
    extra_metrics: dict[str, Any] = field(default_factory=dict)
    extra_directions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    legacy: bool = False
    legacy_results: list[dict] = field(default_factory=list)

    def extra_block(self, summary: dict) -> dict:
        """The separate block with our metrics, directions, notes and warnings."""
        return {
            "producer": f"sae-lens-ext {summary.get('sae_lens_ext_version')}",
            "saebench_schema_commit": SAEBENCH_SCHEMA_COMMIT,
            "metric_directions": {
                key: DIRECTIONS[value] for key, value in self.directions.items()
            },
            "metrics": self.extra_metrics,
            "extra_metric_directions": {
                key: DIRECTIONS[value] for key, value in self.extra_directions.items()
            },
            "notes": self.notes,
            "warnings": self.warnings,
            "preset": summary.get("preset"),
            "dataset": summary.get("dataset"),
            "n_tokens": summary.get("n_tokens"),
            "seed": summary.get("seed"),
        }

    def document(self, run: SAEBenchRun, eval_id: str, created_ms: int) -> dict:
        """The JSON document, in SAEBench's typed layout or its MDL layout."""
        sae_lens_version = run.summary.get("versions", {}).get("sae-lens")
        not_saebench = (
            f"not run by SAEBench: sae-lens-ext "
            f"{run.summary.get('sae_lens_ext_version')}, SAEBench schema "
            f"{SAEBENCH_SCHEMA_COMMIT[:8]}"
        )
        cfg = sae_cfg_dict(run.sae)
        if self.legacy:
            return {
                "eval_instance_id": eval_id,
                "sae_lens_release": run.release,
                "sae_lens_id": run.sae_id,
                "eval_type_id": self.eval_type_id,
                "sae_lens_version": sae_lens_version,
                "sae_bench_version": not_saebench,
                "date_time": time.strftime(
                    "%Y-%m-%dT%H:%M:%S", time.localtime(created_ms / 1000)
                ),
                "eval_config": self.eval_config,
                "eval_results": self.legacy_results,
                "eval_artifacts": {"artifacts": "None"},
                "sae_cfg_dict": cfg,
                EXTRA_BLOCK: self.extra_block(run.summary),
            }
        return {
            "eval_type_id": self.eval_type_id,
            "eval_config": self.eval_config,
            "eval_id": eval_id,
            "datetime_epoch_millis": created_ms,
            "eval_result_metrics": self.metrics,
            "eval_result_details": self.details,
            "sae_bench_commit_hash": not_saebench,
            "sae_lens_id": run.sae_id,
            "sae_lens_release_id": run.release,
            "sae_lens_version": sae_lens_version,
            "sae_cfg_dict": cfg,
            "eval_result_unstructured": {EXTRA_BLOCK: self.extra_block(run.summary)},
        }


def check_finite(categories: dict[str, dict[str, Any]]) -> None:
    """Raise :class:`SAEBenchSkip` when a metric is NaN or infinite.

    SAEBench's schemas type every metric as a number, so no valid JSON
    holds such a value.
    """
    bad = [
        f"{category}.{key}"
        for category, values in categories.items()
        for key, value in values.items()
        if value is None or not math.isfinite(float(value))
    ]
    if bad:
        raise SAEBenchSkip(
            f"these metrics are not finite, so no valid SAEBench JSON exists: {bad}"
        )


def sae_cfg_dict(sae) -> dict:
    """The SAE's config as SAE-Lens writes it (``cfg.to_dict()``)."""
    cfg = sae.cfg
    if hasattr(cfg, "to_dict"):
        return json_safe(cfg.to_dict())
    return json_safe(dataclasses.asdict(cfg))


def collect_directions(registry) -> dict[str, dict[str, str]]:
    """``analysis -> {metric: direction}`` from every plugin's hook."""
    found: dict[str, dict[str, str]] = {}

    def register(analysis_name: str, directions: dict[str, str]) -> None:
        bad = {k: v for k, v in directions.items() if v not in DIRECTIONS}
        if bad:
            raise ValueError(
                f"metric directions of {analysis_name!r} must be one of "
                f"{sorted(DIRECTIONS)}; got {bad}"
            )
        found.setdefault(analysis_name, {}).update(directions)

    registry.hook.register_metric_directions(register=register)
    return found


def collect_mappings(registry) -> dict[str, tuple[Any, Any]]:
    """``analysis -> (build, warnings)`` from every plugin's hook."""
    found: dict[str, tuple[Any, Any]] = {}

    def register(analysis_name: str, build, warnings=None) -> None:
        if analysis_name in found:
            raise ValueError(f"two SAEBench mappings registered for {analysis_name!r}")
        found[analysis_name] = (build, warnings)

    registry.hook.register_saebench_evals(register=register)
    return found


def annotate_directions(summary: dict, directions: dict[str, dict[str, str]]) -> None:
    """Add ``directions`` (every scalar metric) to each analysis entry."""
    for name, entry in summary.get("analyses", {}).items():
        known = directions.get(name, {})
        entry["directions"] = {
            key: known.get(key, UNSPECIFIED)
            for key, value in entry.get("metrics", {}).items()
            if isinstance(value, int | float | bool) or value is None
        }


def write_saebench_outputs(
    registry, summary: dict, run_dir: Path, results: dict, *, sae, model
) -> dict:
    """Write each mapped result as SAEBench JSON; annotate ``summary`` in place.

    Returns ``summary["saebench"]``: per analysis, the file written, or why
    none was (SAEBench would not report it, or the mapping failed).  A
    failing mapping never loses the run's other results.
    """
    from .presets import matching_preset

    annotate_directions(summary, collect_directions(registry))
    summary["preset"] = matching_preset(summary.get("config", {}))
    # an earlier run in this folder (--overwrite) must not leave files that
    # look like this run's results
    for stale in (run_dir / OUTPUT_FOLDER).glob("*.json"):
        stale.unlink()
    record: dict[str, dict] = {}
    created_ms = int(time.time() * 1000)
    for name, (build, warn) in collect_mappings(registry).items():
        if name not in results:
            continue
        run = SAEBenchRun(
            release=summary.get("release", ""),
            sae_id=summary.get("sae_id", ""),
            sae=sae,
            model=model,
            seed=int(summary.get("seed", 0)),
            config=summary.get("config", {}).get(name, {}),
            summary=summary,
        )
        entry = summary["analyses"][name]
        try:
            warnings = list(warn(results[name], run)) if warn else []
            if warnings:
                entry["warnings"] = warnings
            evaluation = build(results[name], run)
        except SAEBenchSkip as skip:
            record[name] = {"written": False, "reason": str(skip)}
            continue
        except Exception as exc:  # a mapping bug must not lose the run
            record[name] = {"written": False, "error": f"{type(exc).__name__}: {exc}"}
            continue
        evaluation.warnings = [*warnings, *evaluation.warnings]
        path = run_dir / OUTPUT_FOLDER / f"{evaluation.eval_type_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, evaluation.document(run, str(uuid.uuid4()), created_ms))
        record[name] = {
            "written": True,
            "file": str(path.relative_to(run_dir)),
            "eval_type_id": evaluation.eval_type_id,
            "notes": evaluation.notes,
        }
    summary["saebench"] = record
    return record


def card_notes(summary: dict) -> str | None:
    """Model-card Markdown: warnings, SAEBench files and the preset, or None."""
    lines = []
    for name, entry in summary.get("analyses", {}).items():
        for warning in entry.get("warnings", []):
            lines.append(f"- **Warning ({name})**: {warning}")
    record = summary.get("saebench") or {}
    for name, item in record.items():
        if item.get("written"):
            lines.append(f"- SAEBench-format `{name}` results: `{item['file']}`")
        else:
            why = item.get("reason") or f"mapping failed: {item.get('error')}"
            lines.append(f"- No SAEBench-format `{name}` results: {why}")
    if summary.get("preset"):
        lines.append(
            f"- Settings: the `{summary['preset']}` preset "
            "(see docs/saebench.md for what it changes and why)."
        )
    if not lines:
        return None
    return (
        "SAEBench comparison and caveats (the `better` column of the headline "
        "table says whether higher or lower is better):\n\n" + "\n".join(lines)
    )
