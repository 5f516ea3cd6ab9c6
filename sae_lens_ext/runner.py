"""``sae_lens_ext.run``: load, one shared pass, analyses, artifacts, publish.

A run writes ``summary.json`` first (status ``running``) and rewrites it as
each analysis finishes, so a failure part-way keeps everything already
written and says what failed.
"""

from __future__ import annotations

import dataclasses
import re
import time
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .analysis import Analysis, AnalysisResult, RunContext
from .artifacts import json_safe, write_json, write_result
from .loading import load_model_for_sae, load_sae
from .plugins import get_registry, resolve_enabled, unknown_name_message
from .saebench import write_saebench_outputs
from .shared_pass import (
    ActivationCache,
    cache_key,
    model_activations,
    run_shared_pass,
)
from .tokens import DatasetError, iter_token_batches, load_hf_dataset, load_token_file

DEFAULT_N_TOKENS = 65_536


class RunError(RuntimeError):
    """A run could not start or an analysis failed; the message says what to do."""


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
    ``push_to_hub`` names a repo to publish the finished run to, with
    ``push_options`` passed to :func:`sae_lens_ext.push_to_hub`.
    """
    registry = get_registry()
    started = time.perf_counter()
    torch.manual_seed(seed)
    enabled = resolve_enabled(plugins, registry.plugin_names())
    classes = {
        name: cls
        for name, (plugin, cls) in registry.analyses().items()
        if plugin in enabled
    }
    configs = build_configs(classes, config or {})
    if sae is None:
        release = release or default_release(registry)
        sae = load_sae(release, sae_id, device=device)
        sae_id = sae_id or registry.releases()[release].default_sae_id
    release, sae_id = release or "(in memory)", sae_id or "(in memory)"
    metadata = sae.cfg.metadata
    hook_name = metadata.hook_name
    needs = set().union(*(cls.needs for cls in classes.values())) if classes else set()
    if model is None and needs & {"activations", "tokens", "model"}:
        model = load_model_for_sae(sae, release, device=device)
    if model is not None and not hook_name:
        raise RunError(
            "The SAE's cfg.json metadata has no hook_name, so the shared pass "
            "does not know where to read activations; set sae.cfg.metadata.hook_name."
        )
    run_dir = prepare_run_dir(out_dir, release, sae_id, overwrite)
    summary = {
        "sae_lens_ext_version": package_version("sae-lens-ext"),
        "versions": package_versions(),
        "status": "running",
        "release": release,
        "sae_id": sae_id,
        "model_name": metadata.model_name,
        "hook_name": hook_name,
        "dataset": dataset_label(dataset, release, metadata),
        "n_tokens": 0,
        "seed": seed,
        "device": device,
        "plugins": enabled,
        "config": {n: dataclasses.asdict(c) for n, c in configs.items()},
        "analyses": {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(run_dir / "summary.json", summary)
    output = RunOutput(run_dir=run_dir, summary=summary)
    try:
        analyses = {
            name: classes[name](
                configs[name],
                RunContext(
                    sae=sae,
                    release=release,
                    sae_id=sae_id,
                    out_dir=_mkdir(run_dir / name),
                    device=device,
                    seed=seed,
                    model=model,
                    hook_name=hook_name,
                    dataset=summary["dataset"],
                ),
            )
            for name in classes
        }
        streaming = [a for a in analyses.values() if a.needs_pass()]
        if streaming:
            batches = activation_batches(
                model, sae, release, metadata, dataset, n_tokens, batch_size, cache_dir
            )
            summary["n_tokens"] = run_shared_pass(
                sae, streaming, batches, hook_name=hook_name, total_rows=n_tokens
            )
        failures = finish_analyses(analyses, registry, run_dir, summary, output)
        write_saebench_outputs(
            registry, summary, run_dir, output.results, sae=sae, model=model
        )
    except BaseException as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        write_json(run_dir / "summary.json", summary)
        raise
    summary["status"] = "failed" if failures else "complete"
    summary["duration_s"] = round(time.perf_counter() - started, 2)
    write_json(run_dir / "summary.json", summary)
    write_model_card(registry, summary, run_dir, output.results)
    if failures:
        raise RunError(
            "Some analyses failed (their errors are in summary.json; every other "
            f"result is in {run_dir}): "
            + "; ".join(f"{n}: {e}" for n, e in failures.items())
        )
    if push_to_hub:
        from .hub import push_to_hub as push

        output.push = push(run_dir, push_to_hub, **(push_options or {}))
    return output


def finish_analyses(analyses, registry, run_dir, summary, output) -> dict[str, str]:
    """Finish and write each analysis; return the errors of those that failed."""
    failures = {}
    for name, analysis in analyses.items():
        entry = {"title": analysis.title or name, "plugin": registry.plugin_of(name)}
        try:
            result = analysis.finish()
            entry.update(
                metrics=result.metrics, **write_result(result, run_dir / name, run_dir)
            )
            output.results[name] = result
        except Exception as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
            entry["error"] = failures[name]
        summary["analyses"][name] = json_safe(entry)
        write_json(run_dir / "summary.json", summary)
    return failures


def write_model_card(registry, summary, run_dir, results) -> None:
    """Assemble README.md from the analyses' sections and plugins' hooks."""
    from .model_card import render_model_card

    sections = [
        (summary["analyses"][name]["title"], result.card)
        for name, result in results.items()
        if result.card
    ]
    for extra in registry.hook.model_card_sections(summary=summary, run_dir=run_dir):
        if extra:
            sections.append(("Notes", extra))
    (run_dir / "README.md").write_text(render_model_card(summary, sections))


def activation_batches(
    model, sae, release, metadata, dataset, n_tokens, batch_size, cache_dir
):
    """The hook activations for the shared pass, from the cache or the model."""
    hook_name = metadata.hook_name
    label = dataset_label(dataset, release, metadata)
    cache = None
    if cache_dir is not None:
        cache = ActivationCache(
            Path(cache_dir),
            cache_key(metadata.model_name or "model", hook_name, label, n_tokens),
        )
        if cache.exists():
            return cache.read()
    tokens = resolve_tokens(dataset, release, model, metadata, n_tokens)
    skip_bos = metadata.prepend_bos is not False
    batches = model_activations(
        model,
        hook_name,
        iter_token_batches(tokens, batch_size, n_tokens),
        skip_bos=skip_bos,
    )
    if cache is not None:
        meta = {"model": metadata.model_name, "hook": hook_name, "dataset": label}
        return cache.write_through(batches, {**meta, "n_tokens": n_tokens})
    return batches


def resolve_tokens(dataset, release, model, metadata, n_tokens) -> torch.Tensor:
    """Token ids ``[n_seq, context]`` from a tensor, a file, a release or the Hub."""
    if isinstance(dataset, torch.Tensor):
        return dataset
    context = metadata.context_size or model.cfg.n_ctx
    prepend_bos = metadata.prepend_bos is not False
    if dataset is not None and Path(dataset).is_file():
        return load_token_file(Path(dataset), model.tokenizer, context, prepend_bos)
    registered = get_registry().releases().get(release)
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
        configs[name] = cls.config_class(**given)
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


def prepare_run_dir(out_dir, release: str, sae_id: str, overwrite: bool) -> Path:
    """Create the run directory, refusing to mix runs in a non-empty one."""
    if out_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{release}-{sae_id}").strip("-")
        out_dir = Path("runs") / f"{slug}-{stamp}"
    run_dir = Path(out_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise RunError(
            f"{run_dir} already holds files; choose another --out, or pass "
            "--overwrite to write this run's files into it (other files are kept)."
        )
    return _mkdir(run_dir)


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
