"""The host's own hook implementations: the base analysis and the demo release."""

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
    register(
        Release(
            name=demo.DEMO_RELEASE,
            saes={sae_id: demo.demo_sae_path(sae_id) for sae_id in demo.demo_sae_ids()},
            default_sae_id=info["default_sae_id"],
            description="Embedded demo: a 2-layer model trained on Shakespeare "
            "and SAE-Lens SAEs on blocks.0.hook_resid_post",
            load_model=demo.load_demo_model,
            load_tokens=demo.demo_eval_tokens,
            dataset="sae-lens-ext/demo-shakespeare",
        )
    )
