"""The run's ``README.md``: YAML metadata for the Hub, then one section per analysis.

The card is rendered when a run finishes, before anyone knows where it
will be published, so its load-back snippets name the repo as
``<repo_id>``.  ``push_to_hub`` fills that placeholder (and the run's
folder prefix in the repo) with :func:`fill_repo_id` on the copy it
uploads; the file in the run directory is left as written.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO_PLACEHOLDER = "<repo_id>"
DEFAULT_LICENSE = "mit"
BASE_TAGS = ("sae-lens", "sae-lens-ext", "sparse-autoencoder")
_HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Canonical models that moved under an organisation on the Hub.
_MOVED_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LOAD_LINE = re.compile(
    r'(SAE\.from_pretrained|load_sae)\("' + re.escape(REPO_PLACEHOLDER) + r'", "'
)


def render_model_card(
    summary: dict, sections: list[tuple[str, str]], repo_id: str | None = None
) -> str:
    """Markdown model card for a run, with Hub-readable YAML front matter.

    ``summary`` is the run's ``summary.json`` content; ``sections`` are
    ``(title, markdown)`` pairs, one ``##`` section each.  ``repo_id`` fills
    the load-back snippets; without it they show ``<repo_id>`` and
    ``push_to_hub`` fills them in the uploaded copy.
    """
    repo = repo_id or REPO_PLACEHOLDER
    analyses = summary.get("analyses", {})
    lines = ["---", *front_matter(summary), "---", ""]
    lines += [f"# sae-lens-ext analyses of {source_label(summary)}", ""]
    lines += [describe_run(summary), ""]
    sae_folders = [f for entry in analyses.values() for f in entry.get("saes", [])]
    if sae_folders:
        lines += load_block(repo, sae_folders)
    lines += metrics_table(analyses)
    lines += contents_table(analyses)
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    return "\n".join(lines)


def fill_repo_id(card: str, repo_id: str, prefix: str = "") -> str:
    """Put the real repo id (and the run's folder in the repo) into the load snippets."""
    folder = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return _LOAD_LINE.sub(lambda m: f'{m.group(1)}("{repo_id}", "{folder}', card)


def with_plots(body: str, files: list[str]) -> str:
    """``body`` followed by an image for every PNG in ``files`` it does not
    already show; paths are relative to the run folder, where the card is."""
    shown = {match.group(2) for match in _IMAGE.finditer(body)}
    images = [
        f"![{Path(f).stem.replace('_', ' ')}]({f})"
        for f in files
        if f.endswith(".png") and f not in shown
    ]
    return "\n\n".join(part for part in (body.strip(), "\n".join(images)) if part)


def image_paths(card: str) -> list[str]:
    """The targets of the card's Markdown images."""
    return [match.group(2) for match in _IMAGE.finditer(card)]


def relocate_images(card: str, folder: str) -> str:
    """The card with its relative image paths put under ``folder`` (for a copy
    of a run's card placed at the repo root while the run is in ``folder``)."""
    folder = folder.strip("/")
    if not folder:
        return card

    def move(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith("/"):
            return match.group(0)
        return f"![{match.group(1)}]({folder}/{target})"

    return _IMAGE.sub(move, card)


def front_matter(summary: dict) -> list[str]:
    """YAML metadata lines (JSON-quoted values are valid YAML)."""
    tags = [*BASE_TAGS, *(f"sae-lens-ext-{n}" for n in summary.get("analyses", {}))]
    lines = [
        "library_name: saelens",
        f"license: {json.dumps(summary.get('license') or DEFAULT_LICENSE)}",
        "tags:",
        *(f"- {json.dumps(tag)}" for tag in tags),
    ]
    base_model = hub_model_id(summary.get("model_name"))
    if base_model:
        lines.append(f"base_model: {json.dumps(base_model)}")
    lines.append("sae_lens_ext:")
    for key in ("release", "sae_id", "model_name", "hook_name", "dataset", "n_tokens"):
        lines.append(f"  {key}: {json.dumps(summary.get(key))}")
    lines.append("  metrics:")
    metrics = [
        (f"{name}.{key}", value)
        for name, entry in summary.get("analyses", {}).items()
        for key, value in headline(entry.get("metrics", {})).items()
    ]
    lines += [f"    {json.dumps(key)}: {json.dumps(value)}" for key, value in metrics]
    if not metrics:
        lines[-1] = "  metrics: {}"
    return lines


def hub_model_id(model_name: str | None) -> str | None:
    """The Hub id of the model an SAE was trained on, or None if it has none.

    Hub ids (``owner/name``) pass through; TransformerLens aliases such as
    ``gpt2-small`` are mapped to their official Hub name when TransformerLens
    is already loaded (the run loaded it to compute activations).
    """
    if not model_name:
        return None
    if _HUB_MODEL_ID.match(model_name):
        return model_name
    official = _MOVED_MODELS.get(model_name)
    if official is None and "transformer_lens" in sys.modules:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        try:
            official = get_official_model_name(model_name)
        except ValueError:
            return None
    official = _MOVED_MODELS.get(official, official)
    return official if official and _HUB_MODEL_ID.match(official) else None


def source_label(summary: dict) -> str:
    """``release / sae_id`` of the analysed SAE."""
    return f"{summary.get('release')} / {summary.get('sae_id')}"


def describe_run(summary: dict) -> str:
    """One paragraph: model, hook, tokens, seed and versions."""
    n_tokens = summary.get("n_tokens") or 0
    versions = summary.get("versions", {})
    sae_lens = versions.get("sae-lens") or versions.get("sae_lens")
    positions = summary.get("positions_description")
    where = f" at {positions} (`--positions {summary.get('positions')}`)"
    data = f"{n_tokens:,} tokens of `{summary.get('dataset')}`"
    if summary.get("weights_only"):
        data = "weights only (no model loaded, no tokens read)"
    elif positions:
        data += where
    return (
        f"Model `{summary.get('model_name')}`, hook `{summary.get('hook_name')}`, "
        f"{data}, seed "
        f"{summary.get('seed')}. Made with sae-lens-ext "
        f"{summary.get('sae_lens_ext_version')} (SAE-Lens {sae_lens})."
    )


def load_block(repo: str, sae_folders: list[str]) -> list[str]:
    """The "how to load" section: one ``SAE.from_pretrained`` line per SAE folder."""
    lines = ["## Load the SAEs", "", "```python", "from sae_lens import SAE", ""]
    lines += [f'sae = SAE.from_pretrained("{repo}", "{f}")' for f in sae_folders]
    lines += [
        "```",
        "",
        "An SAE whose architecture comes from a sae-lens-ext plugin loads the "
        "same way once the plugin has registered it; "
        "`sae_lens_ext.load_sae(repo_id, folder)` does both.",
        "",
    ]
    return lines


def metrics_table(analyses: dict) -> list[str]:
    """The headline-metrics table (and any analysis errors)."""
    from .saebench import DIRECTIONS

    lines = [
        "## Headline metrics",
        "",
        "| analysis | metric | value | better |",
        "|---|---|---|---|",
    ]
    for name, entry in analyses.items():
        directions = entry.get("directions", {})
        for key, value in headline(entry.get("metrics", {})).items():
            direction = directions.get(key)
            better = DIRECTIONS.get(direction, direction or "")
            lines.append(
                f"| {name} | {key} | {table_cell(format_value(value))} | {better} |"
            )
        if "error" in entry:
            lines.append(f"| {name} | error | {table_cell(entry['error'])} | |")
        if "skipped" in entry:
            lines.append(f"| {name} | skipped | {table_cell(entry['skipped'])} | |")
    return [*lines, ""]


def contents_table(analyses: dict) -> list[str]:
    """Which files each analysis contributed (paths relative to the run folder)."""
    rows = [
        f"| {name} | {table_cell(', '.join(f'`{f}`' for f in entry['files']))} |"
        for name, entry in analyses.items()
        if entry.get("files")
    ]
    if not rows:
        return []
    return ["## Files", "", "| analysis | files |", "|---|---|", *rows, ""]


def headline(metrics: dict, limit: int = 8) -> dict:
    """The first few scalar metrics of an analysis."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | bool)}
    return dict(list(scalars.items())[:limit])


def format_value(value) -> str:
    """Format a metric for a Markdown table."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table_cell(text: str) -> str:
    """Escape text for one Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
