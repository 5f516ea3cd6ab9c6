"""Model cards embed every analysis's plots, and pushed cards' images resolve."""

from __future__ import annotations

import posixpath

import pytest
from conftest import SMALL_DEMO_CONFIG
from hub_double import TOKEN

import sae_lens_ext
from sae_lens_ext.hub import push_to_hub
from sae_lens_ext.model_card import image_paths, relocate_images, with_plots

pytestmark = pytest.mark.usefixtures("one_thread")


def test_with_plots_adds_each_plot_not_already_shown():
    body = "Text.\n\n![LLC trace](llc/trace.png)"
    files = ["llc/trace.png", "llc/calibration.png", "llc/trace.parquet"]
    card = with_plots(body, files)
    assert image_paths(card) == ["llc/trace.png", "llc/calibration.png"]
    assert card.startswith("Text.")
    assert with_plots("", ["mdl/precision_sweep.png"]) == (
        "![precision sweep](mdl/precision_sweep.png)"
    )
    assert with_plots("Only text.", []) == "Only text."


def test_relocate_images_moves_relative_paths_only():
    card = "![a](mdl/a.png) ![b](https://example.org/b.png) [link](mdl/x.csv)"
    moved = relocate_images(card, "/runs/one/")
    assert image_paths(moved) == ["runs/one/mdl/a.png", "https://example.org/b.png"]
    assert "[link](mdl/x.csv)" in moved
    assert relocate_images(card, "") == card


def resolves(card_path: str, files: dict) -> list[str]:
    """The card's image targets that are not files of the repo."""
    folder = posixpath.dirname(card_path)
    card = files[card_path].decode()
    return [
        target
        for target in image_paths(card)
        if posixpath.normpath(posixpath.join(folder, target)) not in files
    ]


@pytest.mark.slow
def test_pushed_cards_show_every_plot_of_every_analysis(hub, tmp_path):
    output = sae_lens_ext.run(
        "sae-lens-ext/demo",
        "resid0-topk-1024",
        config=SMALL_DEMO_CONFIG,
        n_tokens=2048,
        batch_size=16,
        out_dir=tmp_path / "run",
    )
    analyses = output.summary["analyses"]
    plots = {
        name: [f for f in entry["files"] if f.endswith(".png")]
        for name, entry in analyses.items()
    }
    assert set(plots) == {"base", "meta_sae", "mdl", "absorption", "tokenized", "llc"}
    assert all(plots.values()), plots  # every analysis drew something
    assert "meta_sae/fve_vs_null.png" in plots["meta_sae"]
    card = (output.run_dir / "README.md").read_text()
    shown = image_paths(card)
    for files in plots.values():
        assert all(shown.count(f) == 1 for f in files)

    push_to_hub(output.run_dir, "alice/demo-analyses", token=TOKEN)
    push_to_hub(output.run_dir, "alice/demo-runs", token=TOKEN, prefix="runs/demo")
    for repo, card_paths in (
        ("alice/demo-analyses", ["README.md"]),
        ("alice/demo-runs", ["runs/demo/README.md", "README.md"]),
    ):
        files = hub.files(repo)
        for card_path in card_paths:
            assert len(image_paths(files[card_path].decode())) == len(shown)
            assert resolves(card_path, files) == [], (repo, card_path)
