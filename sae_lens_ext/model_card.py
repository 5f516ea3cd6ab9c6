"""The run's ``README.md``: YAML metadata for the Hub, then one section per analysis."""

from __future__ import annotations

import json
import re

REPO_PLACEHOLDER = "<repo_id>"
_HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def render_model_card(
    summary: dict, sections: list[tuple[str, str]], repo_id: str | None = None
) -> str:
    """Markdown model card for a run, with Hub-readable YAML front matter.

    ``repo_id`` fills the load-back snippets; before publishing they show
    ``<repo_id>`` and ``push_to_hub`` renders the card again with the real id.
    """
    repo = repo_id or REPO_PLACEHOLDER
    analyses = summary.get("analyses", {})
    lines = ["---", *front_matter(summary), "---", ""]
    title = f"{summary.get('release')} / {summary.get('sae_id')}"
    lines += [
        f"# sae-lens-ext analyses of {title}",
        "",
        f"Model `{summary.get('model_name')}`, hook `{summary.get('hook_name')}`, "
        f"{summary.get('n_tokens', 0):,} tokens of `{summary.get('dataset')}`, "
        f"seed {summary.get('seed')}. Made with sae-lens-ext "
        f"{summary.get('sae_lens_ext_version')} (SAE-Lens "
        f"{summary.get('versions', {}).get('sae-lens')}).",
        "",
    ]
    sae_folders = [f for entry in analyses.values() for f in entry.get("saes", [])]
    if sae_folders:
        lines += ["## Load the SAEs", "", "```python", "from sae_lens import SAE", ""]
        lines += [f'sae = SAE.from_pretrained("{repo}", "{f}")' for f in sae_folders]
        lines += ["```", ""]
    lines += [
        "## Headline metrics",
        "",
        "| analysis | metric | value |",
        "|---|---|---|",
    ]
    for name, entry in analyses.items():
        for key, value in headline(entry.get("metrics", {})).items():
            lines.append(f"| {name} | {key} | {format_value(value)} |")
        if "error" in entry:
            lines.append(f"| {name} | error | {entry['error']} |")
    lines.append("")
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    return "\n".join(lines)


def front_matter(summary: dict) -> list[str]:
    """YAML metadata lines (JSON-quoted values are valid YAML)."""
    tags = ["sae-lens", "sae-lens-ext", "sparse-autoencoder"]
    tags += [f"sae-lens-ext-{name}" for name in summary.get("analyses", {})]
    lines = ["library_name: saelens", f"license: {summary.get('license', 'mit')}"]
    lines.append("tags:")
    lines += [f"- {tag}" for tag in tags]
    model = summary.get("model_name") or ""
    if _HUB_MODEL_ID.match(model):
        lines.append(f"base_model: {model}")
    lines.append("sae_lens_ext:")
    for key in ("release", "sae_id", "model_name", "hook_name", "dataset"):
        lines.append(f"  {key}: {json.dumps(summary.get(key))}")
    lines.append("  metrics:")
    for name, entry in summary.get("analyses", {}).items():
        for key, value in headline(entry.get("metrics", {})).items():
            lines.append(f"    {name}.{key}: {json.dumps(value)}")
    return lines


def headline(metrics: dict, limit: int = 8) -> dict:
    """The first few scalar metrics of an analysis."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | bool)}
    return dict(list(scalars.items())[:limit])


def format_value(value) -> str:
    """Format a metric for a Markdown table."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
