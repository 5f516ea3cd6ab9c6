"""The run's model card: Hub-readable YAML metadata, load snippets, sections."""

from __future__ import annotations

import re

import pytest
import yaml

from sae_lens_ext.model_card import (
    REPO_PLACEHOLDER,
    fill_repo_id,
    hub_model_id,
    render_model_card,
)


def summary(**overrides) -> dict:
    """A summary.json as the runner writes it, with two analyses."""
    base = {
        "sae_lens_ext_version": "0.1.0",
        "versions": {"sae-lens": "6.54.12", "torch": "2.13.0"},
        "release": "gpt2-small-res-jb",
        "sae_id": "blocks.8.hook_resid_pre",
        "model_name": "EleutherAI/pythia-70m-deduped",
        "hook_name": "blocks.8.hook_resid_pre",
        "dataset": "monology/pile-uncopyrighted",
        "n_tokens": 65536,
        "seed": 0,
        "plugins": ["mdl", "meta_sae"],
        "analyses": {
            "mdl": {
                "title": "MDL",
                "metrics": {"bits_per_token": 3.25, "n_alive": 512, "note": "text"},
                "files": ["mdl/bits.parquet", "mdl/bits.csv"],
                "saes": [],
            },
            "meta_sae": {
                "title": "Meta-SAE",
                "metrics": {"fvu": 0.125},
                "files": ["meta_sae/meta/cfg.json"],
                "saes": ["meta_sae/meta", "meta_sae/meta_2"],
            },
        },
    }
    return {**base, **overrides}


def metadata(card: str) -> dict:
    """The YAML front matter of a card, parsed."""
    match = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    assert match, "card must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_front_matter_is_hub_metadata():
    card = render_model_card(summary(), [])
    meta = metadata(card)
    assert meta["library_name"] == "saelens"
    assert meta["license"] == "mit"
    assert meta["tags"] == [
        "sae-lens",
        "sae-lens-ext",
        "sparse-autoencoder",
        "sae-lens-ext-mdl",
        "sae-lens-ext-meta_sae",
    ]
    assert meta["base_model"] == "EleutherAI/pythia-70m-deduped"
    ours = meta["sae_lens_ext"]
    assert ours["release"] == "gpt2-small-res-jb"
    assert ours["sae_id"] == "blocks.8.hook_resid_pre"
    assert ours["hook_name"] == "blocks.8.hook_resid_pre"
    assert ours["metrics"] == {
        "mdl.bits_per_token": 3.25,
        "mdl.n_alive": 512,
        "meta_sae.fvu": 0.125,
    }


def test_huggingface_hub_reads_the_metadata():
    from huggingface_hub import ModelCard

    card = ModelCard(render_model_card(summary(license="apache-2.0"), []))
    assert card.data.library_name == "saelens"
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "EleutherAI/pythia-70m-deduped"
    assert "sae-lens-ext-mdl" in card.data.tags


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("EleutherAI/pythia-70m-deduped", "EleutherAI/pythia-70m-deduped"),
        ("gpt2", "openai-community/gpt2"),
        ("sae-lens-ext-demo", None),
        ("tiny", None),
        (None, None),
        ("not a/model id", None),
    ],
)
def test_base_model_only_for_hub_models(model_name, expected):
    assert hub_model_id(model_name) == expected
    meta = metadata(render_model_card(summary(model_name=model_name), []))
    assert meta.get("base_model") == expected


def test_transformer_lens_aliases_map_to_hub_ids():
    import transformer_lens  # noqa: F401  (the runner has it loaded)

    assert hub_model_id("gpt2-small") == "openai-community/gpt2"
    assert hub_model_id("pythia-70m-deduped") == "EleutherAI/pythia-70m-deduped"


def test_load_snippets_and_sections():
    sections = [("MDL", "Bits per token, lower is better.\n"), ("Meta-SAE", "Meta.")]
    card = render_model_card(summary(), sections)
    for folder in ("meta_sae/meta", "meta_sae/meta_2"):
        assert f'SAE.from_pretrained("{REPO_PLACEHOLDER}", "{folder}")' in card
    assert "| mdl | bits_per_token | 3.25 |" in card
    assert "| mdl | note |" not in card  # only scalar metrics are headlines
    assert "| meta_sae | fvu | 0.125 |" in card
    headings = re.findall(r"^## (.+)$", card, re.M)
    assert headings == ["Load the SAEs", "Headline metrics", "Files", "MDL", "Meta-SAE"]
    assert "Bits per token, lower is better." in card
    assert card.index("## MDL") < card.index("## Meta-SAE")


def test_fill_repo_id_with_and_without_prefix():
    card = render_model_card(summary(), [])
    filled = fill_repo_id(card, "alice/analyses")
    assert 'SAE.from_pretrained("alice/analyses", "meta_sae/meta")' in filled
    assert REPO_PLACEHOLDER not in filled
    prefixed = fill_repo_id(card, "alice/analyses", "runs/a/")
    assert 'SAE.from_pretrained("alice/analyses", "runs/a/meta_sae/meta_2")' in prefixed
    assert render_model_card(summary(), [], repo_id="alice/analyses") == filled


def test_no_sae_no_load_block_and_errors_escaped():
    analyses = {"mdl": {"title": "MDL", "metrics": {}, "error": "ValueError: a|b\nc"}}
    card = render_model_card(summary(analyses=analyses, n_tokens=None), [])
    assert "## Load the SAEs" not in card
    assert "| mdl | error | ValueError: a\\|b c |" in card
    assert metadata(card)["sae_lens_ext"]["metrics"] == {}
