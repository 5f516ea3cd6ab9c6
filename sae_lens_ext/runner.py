"""``sae_lens_ext.run``: load, one shared pass, analyses, artifacts, publish.

A run writes ``summary.json`` first (status ``running``) and rewrites it as
each analysis finishes, so a failure part-way keeps everything already
written and says what failed.
"""

from __future__ import annotations

import dataclasses
import time
import typing
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .activation_cache import ActivationCache, cache_key_fields
from .analysis import Analysis, AnalysisResult, RunContext
from .artifacts import json_safe, write_json, write_result
from .errors import RunError, RunInterrupted
from .isolation import AnalysisFailures, instantiate, isolated_pass
from .loading import load_sae
from .models import load_model, model_for_sae, release_with_dataset
from .plugins import get_registry, resolve_enabled, unknown_name_message
from .positions import PositionFilter, default_positions, parse_positions
from .run_dir import prepare_run_dir
from .sae_names import run_labels
from .saebench import write_saebench_outputs
from .shared_pass import model_activations
from .tokens import (
    DatasetError,
    iter_token_batches,
    load_hf_dataset,
    load_token_file,
    n_sequences_used,
)
from .validation import (
    check_context_size,
    check_metrics_finite,
    check_option_values,
    check_run_options,
    check_sae_weights,
    check_tokens,
    option_error,
    short_dataset_warning,
)
from .weights_only import NO_MODEL_FLAG, NO_MODEL_METADATA, split_weights_only

DEFAULT_N_TOKENS = 65_536

__all__ = ["RunError", "RunInterrupted", "RunOutput", "RunWarning", "run"]


class RunWarning(UserWarning):
    """Something a run's user must know; also listed in summary.json."""


@dataclass
class RunOutput:
    """What ``run`` returns: the run directory, its summary and the results."""

    run_dir: Path
    summary: dict
    results: dict[str, AnalysisResult] = field(default_factory=dict)
    push: Any = None


def run(
    release: str | None = None,
    sae_id: str | None = None,
    *,
    plugins: str | list[str] | None = None,
    out_dir: str | Path | None = None,
    config: dict[str, dict[str, Any]] | None = None,
    dataset: str | Path | torch.Tensor | None = None,
    n_tokens: int = DEFAULT_N_TOKENS,
    batch_size: int = 32,
    device: str = "cpu",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    sae=None,
    model=None,
    no_model: bool = False,
    positions: str | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    push_options: dict[str, Any] | None = None,
) -> RunOutput:
    """Run the enabled analyses on one SAE and write a run directory.

    With no ``release`` the embedded demo release's default SAE is used.
    ``plugins`` selects plugins (``"mdl,absorption"``, ``["no:llc"]``);
    ``config`` maps analysis name to config-field overrides.  ``sae`` and
    ``model`` may be given as objects instead of names.  ``dataset`` is a
    Hugging Face dataset name, a local ``.safetensors``/``.txt`` file, or a
    ``[n_seq, context]`` tensor of token ids; by default the release's own.
    ``model`` may also name a model like ``--model`` (see
    :func:`sae_lens_ext.load_model`); with ``no_model`` (or no model in the
    SAE's metadata) only the analyses that work from weights run, the
    others are skipped with a reason.  ``positions`` selects token positions
    (``"all"``, ``"skip-bos"``, ``"0,5,-1"``, ``"tokens:13,42"``).
    ``push_to_hub`` names a repo to publish the finished run to, with
    ``push_options`` passed to :func:`sae_lens_ext.push_to_hub`.
    """
    registry = get_registry()
    started = time.perf_counter()
    check_run_options(n_tokens=n_tokens, batch_size=batch_size, device=device)
    torch.manual_seed(seed)
    enabled = resolve_enabled(plugins, registry.plugin_names(), registry.load_errors())
    run_warnings = registry.warnings()
    classes = {
        name: cls
        for name, (plugin, cls) in registry.analyses().items()
        if plugin in enabled
    }
    configs = build_configs(classes, config or {})
    position_filter = parse_positions(positions) if positions else None
    if sae is None:
        release = release or default_release(registry)
        sae = load_sae(release, sae_id, device=device)
    else:
        check_sae_weights(sae, "the SAE passed to run()")
    release, sae_id = run_labels(sae, release, sae_id)
    metadata = sae.cfg.metadata
    hook_name = metadata.hook_name
    needs = set().union(*(cls.needs for cls in classes.values())) if classes else set()
    skipped: dict[str, str] = {}
    if no_model:
        if model is not None:
            raise RunError("--no-model and --model contradict each other; pass one.")
        classes, skipped = split_weights_only(classes, NO_MODEL_FLAG)
    elif isinstance(model, str):
        model = load_model(model, device=device)
    elif model is None and needs & {"activations", "tokens", "model"}:
        model = model_for_sae(sae, release, device=device)
        if model is None:
            classes, skipped = split_weights_only(classes, NO_MODEL_METADATA)
    position_filter = position_filter or default_positions(metadata, model)
    if model is not None and not hook_name:
        raise RunError(
            "The SAE's cfg.json metadata has no hook_name, so the shared pass "
            "does not know where to read activations; set sae.cfg.metadata.hook_name."
        )
    tokens = None
    if model is not None and needs & {"activations", "tokens"}:
        tokens, short = pass_tokens(
            dataset, release, model, metadata, n_tokens, position_filter
        )
        run_warnings += [short] if short else []
    with warnings.catch_warnings():
        warnings.simplefilter("always", RunWarning)
        for line in run_warnings:
            warnings.warn(line, RunWarning, stacklevel=2)
    target = prepare_run_dir(out_dir, release, sae_id, overwrite)
    run_dir = target.path
    summary = new_summary(
        release=release,
        sae_id=sae_id,
        metadata=metadata,
        dataset=dataset_label(dataset, release, metadata),
        positions=position_filter,
        weights_only=model is None,
        seed=seed,
        device=device,
        enabled=enabled,
        configs=configs,
        run_warnings=run_warnings,
        analyses=skipped_entries(skipped, registry),
    )
    summary["stage_seconds"] = {"setup": round(time.perf_counter() - started, 2)}
    write_json(run_dir / "summary.json", summary)
    output = RunOutput(run_dir=run_dir, summary=summary)
    failed = AnalysisFailures(registry.plugin_of)
    try:
        analyses = start_analyses(
            classes, configs, failed, summary, sae, model, run_dir
        )
        streaming = {n: a for n, a in analyses.items() if a.needs_pass()}
        if streaming and model is not None:
            pass_started = time.perf_counter()
            batches = activation_batches(
                model, sae, metadata, tokens, n_tokens, batch_size, cache_dir,
                position_filter,
            )  # fmt: skip
            summary["n_tokens"] = isolated_pass(
                sae,
                streaming,
                batches,
                failed,
                hook_name=hook_name,
                total_rows=n_tokens,
            )
            summary["stage_seconds"]["shared_pass"] = round(
                time.perf_counter() - pass_started, 2
            )
        finish_analyses(analyses, registry, run_dir, summary, output, failed)
        write_saebench_outputs(
            registry, summary, run_dir, output.results, sae=sae, model=model
        )
    except KeyboardInterrupt:
        summary.update(status="interrupted", error="interrupted (Ctrl-C)")
        write_json(run_dir / "summary.json", summary)
        raise RunInterrupted(f"interrupted; {target.kept_note()}") from None
    except BaseException as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        write_json(run_dir / "summary.json", summary)
        raise
    close_run(registry, summary, target, output, failed, started)
    if push_to_hub:
        from .hub import push_to_hub as push

        output.push = push(output.run_dir, push_to_hub, **(push_options or {}))
    return output


def new_summary(
    *,
    release,
    sae_id,
    metadata,
    dataset,
    positions,
    weights_only,
    seed,
    device,
    enabled,
    configs,
    run_warnings,
    analyses,
) -> dict:
    """A run's ``summary.json`` content at the start (status ``running``)."""
    return {
        "sae_lens_ext_version": package_version("sae-lens-ext"),
        "versions": package_versions(),
        "status": "running",
        "release": release,
        "sae_id": sae_id,
        "model_name": metadata.model_name,
        "hook_name": metadata.hook_name,
        "dataset": dataset,
        "positions": positions.spec,
        "positions_description": positions.describe(),
        "n_tokens": 0,
        "weights_only": weights_only,
        "seed": seed,
        "device": device,
        "plugins": enabled,
        "config": {n: dataclasses.asdict(c) for n, c in configs.items()},
        "warnings": run_warnings,
        "analyses": analyses,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def start_analyses(classes, configs, failed, summary, sae, model, run_dir) -> dict:
    """Build each analysis with its context; constructor failures are recorded."""
    return instantiate(
        classes,
        configs,
        lambda name: RunContext(
            sae=sae,
            release=summary["release"],
            sae_id=summary["sae_id"],
            out_dir=_mkdir(run_dir / name),
            device=summary["device"],
            seed=summary["seed"],
            model=model,
            hook_name=summary["hook_name"],
            dataset=summary["dataset"],
        ),
        failed,
    )


def close_run(registry, summary, target, output, failed, started) -> None:
    """Set the final status, write the card; raise on failures, else publish.

    ``target`` is the run's :class:`~sae_lens_ext.run_dir.RunDirectory`;
    on success ``output.run_dir`` becomes its final place.
    """
    failures = failed.summary()
    summary["status"] = "failed" if failures else "complete"
    summary["duration_s"] = round(time.perf_counter() - started, 2)
    stages = summary.setdefault("stage_seconds", {})
    stages["other"] = round(max(0.0, summary["duration_s"] - sum(stages.values())), 2)
    write_json(target.path / "summary.json", summary)
    write_model_card(registry, summary, target.path, output.results)
    if failures:
        raise RunError(
            "Some analyses failed (their errors and tracebacks are in summary.json; "
            f"{target.kept_note()}): " + "; ".join(failures.values())
        )
    output.run_dir = target.publish()


def skipped_entries(skipped: dict[str, str], registry) -> dict[str, dict]:
    """``summary.json`` entries of analyses skipped in a weights-only run."""
    analyses = registry.analyses()
    return {
        name: {
            "title": analyses[name][1].title or name,
            "plugin": analyses[name][0],
            "skipped": reason,
        }
        for name, reason in skipped.items()
    }


def finish_analyses(analyses, registry, run_dir, summary, output, failed) -> None:
    """Finish and write each analysis that has not failed; record the failures.

    Each finish's wall time goes to ``summary["stage_seconds"]``.  An
    analysis whose headline metrics come out null or non-finite fails and its
    files are not written.
    """
    for name, (_, cls) in registry.analyses().items():
        if name not in analyses and name not in failed:
            continue
        analysis = analyses.get(name)
        entry = {"title": cls.title or name, "plugin": registry.plugin_of(name)}
        if name not in failed:
            finish_started = time.perf_counter()
            try:
                result = analysis.finish()
                entry["metrics"] = result.metrics
                bad = check_metrics_finite(result.metrics, cls.headline_metrics)
                if bad:
                    raise ValueError(
                        f"headline metrics {', '.join(bad)} came out null or not "
                        "finite; the result is not valid and was not written"
                    )
                entry.update(write_result(result, run_dir / name, run_dir))
                output.results[name] = result
            except Exception as exc:
                failed.record(name, "finish()", exc)
            summary.setdefault("stage_seconds", {})[name] = round(
                time.perf_counter() - finish_started, 2
            )
        if name in failed:
            entry.update(failed.entries[name])
        summary["analyses"][name] = json_safe(entry)
        write_json(run_dir / "summary.json", summary)


def write_model_card(registry, summary, run_dir, results) -> None:
    """Assemble README.md from the analyses' sections (each with its plots)
    and plugins' hooks."""
    from .model_card import render_model_card, with_plots

    sections = []
    for name, result in results.items():
        entry = summary["analyses"][name]
        body = with_plots(result.card or "", entry.get("files", []))
        if body:
            sections.append((entry["title"], body))
    for extra in registry.hook.model_card_sections(summary=summary, run_dir=run_dir):
        if extra:
            sections.append(("Notes", extra))
    (run_dir / "README.md").write_text(render_model_card(summary, sections))


def activation_batches(
    model, sae, metadata, tokens, n_tokens, batch_size, cache_dir,
    positions: PositionFilter,
):  # fmt: skip
    """The hook activations for the shared pass, from the cache or the model.

    ``tokens`` are the sequences the pass reads (already cut to ``n_tokens``).
    """
    hook_name = metadata.hook_name
    skip_bos = metadata.prepend_bos is not False
    cache = None
    if cache_dir is not None:
        key = cache_key_fields(
            tokens=tokens,
            model=model,
            model_name=metadata.model_name,
            hook_name=hook_name,
            positions=positions.spec,
            context_size=tokens.shape[1],
            prepend_bos=skip_bos,
            n_tokens=n_tokens,
        )
        cache = ActivationCache(Path(cache_dir), key)
        if cache.exists():
            return cache.read()
    batches = model_activations(
        model,
        hook_name,
        iter_token_batches(tokens, batch_size, n_tokens),
        positions=positions,
    )
    return cache.write_through(batches) if cache is not None else batches


def pass_tokens(dataset, release, model, metadata, n_tokens, positions):
    """The checked token ids the pass reads, and a warning if they run short.

    The ids are cut to the sequences a pass over ``n_tokens`` reads.
    """
    tokens = resolve_tokens(dataset, release, model, metadata, n_tokens)
    check_tokens(
        tokens,
        d_vocab=model.cfg.d_vocab,
        n_ctx=model.cfg.n_ctx,
        source=dataset_label(dataset, release, metadata),
    )
    tokens = tokens[: n_sequences_used(tokens, n_tokens)]  # what the pass reads
    selected = positions.count(tokens)
    return tokens, short_dataset_warning(
        tokens, n_tokens, selected, positions.describe()
    )


def resolve_tokens(dataset, release, model, metadata, n_tokens) -> torch.Tensor:
    """Token ids ``[n_seq, context]`` from a tensor, a file, a release or the Hub."""
    if isinstance(dataset, torch.Tensor):
        return dataset
    context = metadata.context_size or model.cfg.n_ctx
    check_context_size(context, model.cfg.n_ctx)
    prepend_bos = metadata.prepend_bos is not False
    if dataset is not None and Path(dataset).is_file():
        return load_token_file(Path(dataset), model.tokenizer, context, prepend_bos)
    registered = get_registry().releases().get(release) or release_with_dataset(
        metadata.dataset_path
    )
    if dataset is None and registered is not None and registered.load_tokens:
        return registered.load_tokens(None)
    name = dataset or metadata.dataset_path
    if not name:
        raise DatasetError(
            "no dataset: pass --dataset (a local .safetensors/.txt file or a Hub "
            "dataset name); the SAE's metadata names none"
        )
    return load_hf_dataset(str(name), model.tokenizer, context, prepend_bos, n_tokens)


def build_configs(
    classes: dict[str, type[Analysis]], overrides: dict
) -> dict[str, Any]:
    """Instantiate each analysis's config dataclass with the given overrides."""
    unknown = set(overrides) - set(classes)
    if unknown:
        name = sorted(unknown)[0]
        raise RunError(
            unknown_name_message("enabled analysis", name, list(classes))
            + " (is its plugin enabled?)"
        )
    configs = {}
    for name, cls in classes.items():
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        given = overrides.get(name, {})
        bad = set(given) - fields
        if bad:
            raise RunError(
                unknown_name_message(
                    f"option of {name}", sorted(bad)[0], sorted(fields)
                )
            )
        check_option_values(name, given)
        try:
            configs[name] = cls.config_class(**given)
        except (ValueError, TypeError) as exc:
            raise option_error(name, cls.config_class, given, exc) from exc
    return configs


def config_fields(cls: type[Analysis]) -> list[tuple[dataclasses.Field, Any]]:
    """The config fields of an analysis with their resolved types."""
    hints = typing.get_type_hints(cls.config_class)
    return [(f, hints.get(f.name, str)) for f in dataclasses.fields(cls.config_class)]


def default_release(registry) -> str:
    """The release used when none is named: the embedded demo."""
    from .demo import DEMO_RELEASE

    if DEMO_RELEASE not in registry.releases():
        raise RunError("the embedded demo release is not installed; name a --release")
    return DEMO_RELEASE


def dataset_label(dataset, release, metadata) -> str:
    """A short, stable name for the dataset a run used."""
    if isinstance(dataset, torch.Tensor):
        return f"tensor{list(dataset.shape)}"
    if dataset is not None:
        return str(dataset)
    return f"{release}:default" if release else str(metadata.dataset_path)


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    names = ["sae-lens", "transformer-lens", "torch", "pluggy", "huggingface_hub"]
    return {name: package_version(name) for name in names}


def package_version(name: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
