"""One group of a sweep: its SAEs share one model forward pass per batch.

``run_group`` loads the group's model once and resolves the tokens once,
starts one :class:`~sae_lens_ext.sweep_job.SAEJob` per SAE (each an
ordinary run directory under ``out_dir/<slug>``), runs the model once per
batch capturing every hook the group reads, feeds each SAE the
activations at its own hook, and finishes every job.  It is what both
executors run: the local one in-process, the Ray one as a task.
"""

from __future__ import annotations

import traceback
from contextlib import ExitStack
from pathlib import Path

from tqdm.auto import tqdm

from .loading import load_sae
from .models import load_model, model_for_sae
from .plugins import get_registry, resolve_enabled
from .positions import default_positions, parse_positions
from .reconstruction import flat_rows
from .runner import build_configs, dataset_label, pass_tokens
from .shared_pass import multi_hook_activations
from .sweep_downstream import share_downstream
from .sweep_job import AnalysisPlan, SAEJob
from .sweep_plan import SweepSAE
from .tokens import iter_token_batches

PASS_NEEDS = {"activations", "tokens", "model"}


def analysis_plan(settings: dict) -> AnalysisPlan:
    """Resolve the sweep's plugins and options (fails on unknown names)."""
    registry = get_registry()
    enabled = resolve_enabled(
        settings["plugins"], registry.plugin_names(), registry.load_errors()
    )
    classes = {
        name: cls
        for name, (plugin, cls) in registry.analyses().items()
        if plugin in enabled
    }
    configs = build_configs(classes, settings["config"] or {})
    return AnalysisPlan(registry, enabled, classes, configs, registry.warnings())


def failure_entry(spec: SweepSAE, step: str, exc: BaseException) -> dict:
    """A sweep entry for an SAE that failed as a whole."""
    return {
        "sae_id": spec.sae_id,
        "slug": spec.slug,
        "status": "failed",
        "error": f"{step}: {type(exc).__name__}: {exc}",
        "traceback": "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)
        ),
    }


def run_group(saes: list[SweepSAE], settings: dict, out_dir: Path) -> dict[str, dict]:
    """Run every SAE of one group on one shared pass; return each SAE's entry.

    An SAE that fails to load or start, or whose analyses fail, gets a
    ``failed`` entry with the error; the others go on.  A failure of the
    model or the tokens fails every SAE of the group.
    """
    plan = analysis_plan(settings)
    device = settings["device"]
    entries: dict[str, dict] = {}
    loaded = {}
    for spec in saes:
        try:
            loaded[spec.sae_id] = (
                spec,
                load_sae(spec.release, spec.sae_id, device=device),
            )
        except Exception as exc:
            entries[spec.sae_id] = failure_entry(spec, "loading the SAE", exc)
    if not loaded:
        return entries
    try:
        context = group_context(plan, settings, loaded)
    except Exception as exc:
        for spec, _ in loaded.values():
            entries[spec.sae_id] = failure_entry(spec, "preparing the group", exc)
        return entries
    jobs = []
    for spec, sae in loaded.values():
        job = SAEJob(sae, spec.release, spec.sae_id, plan)
        try:
            job.start(
                out_dir / spec.slug,
                model=context["model"],
                positions=context["positions"],
                dataset_label=context["dataset_label"],
                settings=settings,
                extra_warnings=context["extra_warnings"],
                overwrite=True,
            )
        except Exception as exc:
            entries[spec.sae_id] = failure_entry(spec, "starting the run", exc)
            continue
        jobs.append((spec, job))
    try:
        with ExitStack() as stack:
            for _, job in jobs:
                stack.enter_context(flat_rows(job.sae))
            feeding = [job for _, job in jobs if job.live]
            if feeding:
                shared_group_pass(context, feeding, settings)
        share_downstream([job for _, job in jobs])
        for spec, job in jobs:
            entries[spec.sae_id] = finish_job(spec, job)
    except KeyboardInterrupt:
        for spec, job in jobs:
            if spec.sae_id not in entries:
                job.mark("interrupted", "interrupted (Ctrl-C)")
        raise
    return entries


def group_context(plan: AnalysisPlan, settings: dict, loaded: dict) -> dict:
    """The model, positions, tokens and dataset label the group's SAEs share."""
    spec, first = next(iter(loaded.values()))
    metadata = first.cfg.metadata
    needs = set().union(*(cls.needs for cls in plan.classes.values()))
    model = settings.get("model")
    if isinstance(model, str):
        model = load_model(model, device=settings["device"])
    elif model is None and needs & PASS_NEEDS:
        model = model_for_sae(first, spec.release, device=settings["device"])
    positions = (
        parse_positions(settings["positions"])
        if settings["positions"]
        else default_positions(metadata, model)
    )
    tokens, warnings = None, []
    if model is not None and needs & {"activations", "tokens"}:
        tokens, short = pass_tokens(
            settings["dataset"],
            spec.release,
            model,
            metadata,
            settings["n_tokens"],
            positions,
        )
        warnings = [short] if short else []
    return {
        "model": model,
        "tokens": tokens,
        "positions": positions,
        "dataset_label": dataset_label(settings["dataset"], spec.release, metadata),
        "extra_warnings": warnings,
    }


def shared_group_pass(context: dict, jobs: list[SAEJob], settings: dict) -> None:
    """One forward pass per batch for all hooks; each SAE gets its hook's rows.

    A failure of the model or the token source fails every SAE's pass.
    """
    hooks = sorted({job.hook_name for job in jobs})
    batches = multi_hook_activations(
        context["model"],
        hooks,
        iter_token_batches(
            context["tokens"], settings["batch_size"], settings["n_tokens"]
        ),
        context["positions"],
    )
    desc = f"sweep pass ({len(jobs)} SAEs, {len(hooks)} hooks)"
    with tqdm(total=settings["n_tokens"], unit="tok", desc=desc) as bar:
        try:
            for by_hook in batches:
                for job in jobs:
                    job.feed(by_hook[job.hook_name])
                bar.update(by_hook[hooks[0]].sae_in.shape[0])
                if not any(job.live for job in jobs):
                    break
        except Exception as exc:
            for job in jobs:
                job.fail_pass(exc)


def finish_job(spec: SweepSAE, job: SAEJob) -> dict:
    """Finish one SAE's run; its entry says whether it completed."""
    try:
        job.finish()
    except Exception as exc:
        entry = failure_entry(spec, "its run", exc)
        entry["run_dir"] = spec.slug
        return entry
    return {"sae_id": spec.sae_id, "slug": spec.slug, "status": "complete"}
