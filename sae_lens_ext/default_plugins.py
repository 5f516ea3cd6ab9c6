"""The host's own hook implementations: the base analysis, the demo release,
the base analysis's SAEBench mapping and the model-card notes on it."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_analyses(register):
    """Register the base analysis (L0, variance explained, dead latents, CE)."""
    from .base_analysis import BaseAnalysis

    register(BaseAnalysis)


@hookimpl
def register_releases(register):
    """Register the embedded demo release when its data is installed."""
    from . import demo
    from .releases import Release

    if not (demo.demo_dir() / "release.json").is_file():
        return
    info = demo.demo_release_info()
    hooks = [entry["hook_name"] for entry in info.get("hooks", [])] or [
        info["hook_name"]
    ]
    register(
        Release(
            name=demo.DEMO_RELEASE,
            saes={sae_id: demo.demo_sae_path(sae_id) for sae_id in demo.demo_sae_ids()},
            default_sae_id=info["default_sae_id"],
            description="Embedded demo: a 2-layer model trained on Shakespeare "
            f"(and first-letter spelling) and SAE-Lens SAEs on {', '.join(hooks)}",
            load_model=demo.load_demo_model,
            load_tokens=demo.demo_eval_tokens,
            dataset="sae-lens-ext/demo-shakespeare",
        )
    )


@hookimpl
def register_metric_directions(register):
    """Directions of the base analysis's metrics."""
    from .saebench_core import BASE_DIRECTIONS

    register("base", BASE_DIRECTIONS)


@hookimpl
def register_saebench_evals(register):
    """The base analysis as SAEBench's ``core`` eval."""
    from .saebench_core import core_eval

    register("base", core_eval)


@hookimpl
def model_card_sections(summary, run_dir):
    """Warnings, SAEBench-format files and the preset, when there are any."""
    from .saebench import card_notes

    return card_notes(summary)
