"""The embedded demo release loads by name, offline, and is a real model + SAEs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from sae_lens_ext import load_sae
from sae_lens_ext.cli import build_cli
from sae_lens_ext.demo import (
    DEMO_RELEASE,
    demo_eval_tokens,
    demo_release_info,
    demo_sae_ids,
    load_demo_model,
    load_demo_tokenizer,
)
from sae_lens_ext.loading import SAELoadError


@pytest.fixture(scope="module")
def demo_model():
    return load_demo_model()


def test_release_has_three_widths_and_metadata():
    ids = demo_sae_ids()
    assert len(ids) >= 3
    widths = set()
    for sae_id in ids:
        sae = load_sae(DEMO_RELEASE, sae_id)
        meta = sae.cfg.metadata
        layer = int(sae_id.split("-")[0].removeprefix("resid"))
        assert meta.hook_name == f"blocks.{layer}.hook_resid_post"
        assert meta.model_name == "sae-lens-ext-demo"
        assert meta.sae_lens_version
        widths.add(sae.cfg.d_sae)
    assert len(widths) >= 3


def test_unknown_demo_id_lists_the_ids():
    with pytest.raises(SAELoadError, match="resid0-topk-1024"):
        load_sae(DEMO_RELEASE, "resid0-topk-1000")


def test_model_loss_is_well_below_uniform(demo_model):
    """The held-out loss, computed by hand from the logits, is far below
    uniform and matches TransformerLens's own loss (the null baseline from
    the tokens alone is in test_oracles_demo.py)."""
    tokens = demo_eval_tokens(256)
    with torch.no_grad():
        parts = [
            (demo_model(t, return_type="logits"), demo_model(t, return_type="loss"))
            for t in tokens.split(64)
        ]
    logits = torch.cat([p[0] for p in parts])[:, :-1]
    by_hand = -logits.log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean().item()
    library = sum(p[1].item() for p in parts) / len(parts)
    assert abs(by_hand - library) < 1e-4
    assert by_hand < 5.0 < math.log(demo_model.cfg.d_vocab)


def test_default_sae_reconstructs_real_activations(demo_model):
    sae = load_sae(DEMO_RELEASE, demo_release_info()["default_sae_id"])
    hook = sae.cfg.metadata.hook_name
    _, cache = demo_model.run_with_cache(demo_eval_tokens(16), names_filter=hook)
    x = cache[hook][:, 1:].reshape(-1, sae.cfg.d_in)
    with torch.no_grad():
        err = (x - sae(x)).pow(2).sum()
    explained = 1 - (err / (x - x.mean(0)).pow(2).sum()).item()
    assert explained > 0.6


def test_tokenizer_has_multi_letter_tokens():
    tokenizer = load_demo_tokenizer()
    words = [t for t in tokenizer.get_vocab() if t.lstrip("Ġ").isalpha()]
    assert sum(len(w.lstrip("Ġ")) >= 3 for w in words) > 1000
    assert tokenizer.bos_token_id is not None


def test_cli_run_on_the_demo_release(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        build_cli(),
        ["run", "-p", "base", "--out", str(out), "--n-tokens", "4096"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["release"] == DEMO_RELEASE
    assert summary["sae_id"] == demo_release_info()["default_sae_id"]
    metrics = summary["analyses"]["base"]["metrics"]
    assert metrics["explained_variance"] > 0.6
    assert metrics["ce_loss_spliced"] < metrics["ce_loss_zero_ablated"]


def test_named_dataset_goes_through_hf_datasets(tmp_path):
    """A dataset name is read with HF `datasets` (here a local dataset folder)."""
    from sae_lens_ext.runner import resolve_tokens

    folder = tmp_path / "plays"
    folder.mkdir()
    (folder / "train.txt").write_text(
        "To be, or not to be, that is the question.\n" * 400
    )
    model = load_demo_model()
    sae = load_sae(DEMO_RELEASE, "resid0-topk-512")
    tokens = resolve_tokens(str(folder), DEMO_RELEASE, model, sae.cfg.metadata, 2000)
    assert tokens.shape[1] == 128
    assert (tokens[:, 0] == load_demo_tokenizer().bos_token_id).all()
    text = load_demo_tokenizer().decode(tokens[0, 1:20])
    assert "be" in text
