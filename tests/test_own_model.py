"""Bring your own model and SAE: --model, local SAE folders, weights-only runs,
--positions, CE flags and SAE objects named from their metadata."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_HOOK, make_sae

from sae_lens_ext import run
from sae_lens_ext.base_analysis import ce_warning
from sae_lens_ext.cli import build_cli
from sae_lens_ext.demo import DEMO_RELEASE, demo_sae_path
from sae_lens_ext.models import ModelError, load_model
from sae_lens_ext.positions import PositionsError, default_positions, parse_positions


def hook_acts(model, tokens):
    """``blocks.0.hook_resid_post`` of the tiny model ``[n_seq, ctx, d]``."""
    _, cache = model.run_with_cache(tokens, names_filter=TINY_HOOK)
    return cache[TINY_HOOK]


def base_metrics(output):
    return output.summary["analyses"]["base"]["metrics"]


# --- loading from the command line -------------------------------------------------


def test_a_copied_demo_sae_folder_runs_with_the_model_its_release_provides(tmp_path):
    folder = tmp_path / "my-sae"
    shutil.copytree(demo_sae_path("resid0-topk-512"), folder)
    out = tmp_path / "run"
    args = ["run", "--release", str(folder), "-p", "base", "--n-tokens", "512",
            "--batch-size", "2"]  # fmt: skip
    done = CliRunner().invoke(build_cli(), [*args, "--out", str(out)])
    assert done.exit_code == 0, done.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["release"] == str(folder) and summary["sae_id"] == "my-sae"
    assert summary["model_name"] == "sae-lens-ext-demo"
    # the demo's own tokens (its dataset), so the numbers match the demo's release
    demo = run(DEMO_RELEASE, "resid0-topk-512", plugins=["base"], n_tokens=512,
               batch_size=2, out_dir=tmp_path / "demo")  # fmt: skip
    assert summary["analyses"]["base"]["metrics"] == pytest.approx(
        base_metrics(demo), rel=1e-5
    )


def test_unknown_model_name_gives_nearest_names_and_the_hint_not_the_list():
    with pytest.raises(ModelError) as caught:
        load_model("gpt2-smal")
    message = str(caught.value)
    assert "gpt2-small" in message and "--model" in message and "--no-model" in message
    assert "Qwen/Qwen3-8B" not in message and len(message) < 600


def test_module_function_model(tmp_path, monkeypatch, tiny_model):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            import conftest

            calls = []

            def tiny(device="cpu"):
                calls.append(device)
                return conftest.TINY

            def not_a_model():
                return "gpt2"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import conftest

    monkeypatch.setattr(conftest, "TINY", tiny_model, raising=False)
    assert load_model("my_models:tiny") is tiny_model
    with pytest.raises(ModelError, match="returned str, not a"):
        load_model("my_models:not_a_model")
    with pytest.raises(ModelError, match="cannot import module"):
        load_model("no_such_module_here:f")


def test_run_accepts_a_model_spec(tmp_path, monkeypatch, tiny_model, tiny_tokens):
    (tmp_path / "spec_models.py").write_text(
        "import conftest\n\ndef tiny():\n    return conftest.TINY_SPEC\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import conftest

    monkeypatch.setattr(conftest, "TINY_SPEC", tiny_model, raising=False)
    sae = make_sae()
    sae.cfg.metadata.model_name = "not-a-model-anywhere"
    output = run(sae=sae, model="spec_models:tiny", dataset=tiny_tokens,
                 plugins=["base"], out_dir=tmp_path / "run", n_tokens=300)  # fmt: skip
    assert base_metrics(output)["n_tokens"] > 0


# --- weights-only runs -------------------------------------------------------------


def forbid_model_loading(monkeypatch):
    """Make every route to a model fail the test."""
    import sae_lens_ext.models as models
    import sae_lens_ext.runner as runner
    from sae_lens_ext.plugins import get_registry

    def refuse(*args, **kwargs):
        raise AssertionError("a weights-only run tried to load a model")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(runner, "load_model", refuse)
    for release in get_registry().releases().values():
        if release.load_model is not None:
            monkeypatch.setattr(release, "load_model", refuse)


META_FAST = {"meta_sae": {"steps": 30, "batch_size": 64}}


def test_no_model_metadata_runs_weights_analyses_and_skips_the_rest(
    tmp_path, monkeypatch
):
    forbid_model_loading(monkeypatch)
    sae = make_sae(d_sae=96)
    sae.cfg.metadata.model_name = None
    output = run(sae=sae, plugins=["base", "meta_sae", "mdl"], config=META_FAST,
                 out_dir=tmp_path / "run")  # fmt: skip
    analyses = output.summary["analyses"]
    assert output.summary["status"] == "complete"
    meta = analyses["meta_sae"]["metrics"]
    assert meta["base_latents_used"] == 96  # no dead-latent filtering without tokens
    for name in ("base", "mdl"):
        assert "metrics" not in analyses[name]
        assert "no model_name" in analyses[name]["skipped"]
        assert "--model" in analyses[name]["skipped"]
    card = (output.run_dir / "README.md").read_text()
    assert "| mdl | skipped |" in card and "| base | skipped |" in card
    assert "weights only (no model loaded, no tokens read)" in card
    assert output.summary["weights_only"] is True


def test_no_model_flag_on_the_cli(tmp_path, monkeypatch):
    forbid_model_loading(monkeypatch)
    out = tmp_path / "run"
    args = ["run", "--no-model", "-p", "meta_sae,base", "--meta_sae.steps", "30",
            "--out", str(out)]  # fmt: skip
    done = CliRunner().invoke(build_cli(), args)
    assert done.exit_code == 0, done.output
    assert (
        "base: skipped (needs hook activations and the model itself, but there is "
        "no model (--no-model was given))" in done.output
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["analyses"]["meta_sae"]["metrics"]["fraction_variance_explained"]
    both = CliRunner().invoke(
        build_cli(), ["run", "--no-model", "--model", "gpt2", "--out", str(out / "x")]
    )
    assert both.exit_code != 0 and "contradict" in str(both.exception)


# --- positions ---------------------------------------------------------------------


def test_parse_positions():
    metadata = make_sae().cfg.metadata
    assert default_positions(metadata, None).spec == "skip-bos"
    metadata.prepend_bos = False
    assert default_positions(metadata, None).spec == "all"
    assert parse_positions("3, -1").positions == (3, -1)
    assert parse_positions("tokens:7,9").token_ids == (7, 9)
    for bad in ("first", "tokens:", "tokens:-3", "3-5", "rows:1"):
        with pytest.raises(PositionsError, match="--positions"):
            parse_positions(bad)
    tokens = torch.arange(12).view(2, 6)
    assert parse_positions("-1").mask(tokens)[:, 5].all()
    with pytest.raises(PositionsError, match="outside the context of 6"):
        parse_positions("6").mask(tokens)


@pytest.mark.parametrize("spec", ["3", "tokens:5,6,7,8,9,10", "all"])
def test_positions_apply_to_the_pass_and_the_ce_splice(
    spec, tiny_model, tiny_tokens, tmp_path
):
    sae = make_sae()
    output = run(sae=sae, model=tiny_model, dataset=tiny_tokens, plugins=["base"],
                 positions=spec, out_dir=tmp_path / "run", n_tokens=10_000)  # fmt: skip
    mask = parse_positions(spec).mask(tiny_tokens)
    with torch.no_grad():
        acts = hook_acts(tiny_model, tiny_tokens)
        x = acts[mask]
        err = (x - sae(x)).pow(2).sum()
        cut = mask[..., None]
        spliced = tiny_model.run_with_hooks(
            tiny_tokens,
            return_type="loss",
            fwd_hooks=[(TINY_HOOK, lambda a, hook: torch.where(cut, sae(a), a))],
        ).item()
    metrics = base_metrics(output)
    assert metrics["n_tokens"] == int(mask.sum())
    total = (x - x.mean(0)).pow(2).sum()
    assert metrics["explained_variance"] == pytest.approx(
        1 - (err / total).item(), rel=1e-4
    )
    assert metrics["ce_loss_spliced"] == pytest.approx(spliced, rel=1e-5)
    assert output.summary["positions"] == parse_positions(spec).spec
    card = (output.run_dir / "README.md").read_text()
    assert f"`--positions {output.summary['positions']}`" in card


def test_default_positions_leave_bos_out_of_the_splice(
    tiny_model, tiny_tokens, tmp_path
):
    sae = make_sae()
    default = run(sae=sae, model=tiny_model, dataset=tiny_tokens, plugins=["base"],
                  out_dir=tmp_path / "a", n_tokens=10_000)  # fmt: skip
    every = run(sae=sae, model=tiny_model, dataset=tiny_tokens, plugins=["base"],
                positions="all", out_dir=tmp_path / "b", n_tokens=10_000)  # fmt: skip
    assert default.summary["positions"] == "skip-bos"
    assert base_metrics(default)["n_tokens"] == 64 * 11
    assert base_metrics(every)["n_tokens"] == 64 * 12
    assert (
        base_metrics(default)["ce_loss_clean"] == base_metrics(every)["ce_loss_clean"]
    )
    assert base_metrics(default)["ce_loss_spliced"] != pytest.approx(
        base_metrics(every)["ce_loss_spliced"], rel=1e-6
    )
    card = (default.run_dir / "README.md").read_text()
    assert "BOS excluded" in card and "--base.ce_batches 0" in card


def test_a_bad_positions_value_fails_before_the_model_loads(tmp_path, monkeypatch):
    forbid_model_loading(monkeypatch)
    with pytest.raises(PositionsError, match="--positions"):
        run(positions="first", plugins=["base"], out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_token_filter_that_matches_nothing_names_positions(
    tiny_model, tiny_tokens, tmp_path
):
    with pytest.raises(ValueError, match="--positions"):
        run(sae=make_sae(), model=tiny_model, dataset=tiny_tokens, plugins=["base"],
            positions="tokens:39999", out_dir=tmp_path / "run")  # fmt: skip


def test_the_activation_cache_is_kept_apart_per_position_selection(
    tiny_model, tiny_tokens, tmp_path
):
    common = dict(sae=make_sae(), model=tiny_model, dataset=tiny_tokens,
                  plugins=["base"], n_tokens=10_000, cache_dir=tmp_path / "cache")  # fmt: skip
    first = run(**common, out_dir=tmp_path / "a")
    other = run(**common, positions="2", out_dir=tmp_path / "b")
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert base_metrics(other)["n_tokens"] == 64
    assert base_metrics(first)["n_tokens"] == 64 * 11


# --- CE flags ----------------------------------------------------------------------


def test_ce_warning_flags_an_sae_that_lowers_the_loss():
    assert ce_warning(clean=2.0, spliced=2.5, zeroed=6.0, recovered=0.875) is None
    # noise within 1% of the ablation gap is not a finding
    assert ce_warning(clean=2.0, spliced=1.99, zeroed=6.0, recovered=1.0025) is None
    message = ce_warning(clean=2.0, spliced=1.5, zeroed=6.0, recovered=1.125)
    assert "below clean" in message and "1.125 > 1" in message
    assert message.endswith("the SAE lowers the loss: check the hook and positions")


def test_a_splice_below_clean_is_flagged_in_the_run(tiny_model, tiny_tokens, tmp_path):
    """A planted case: an 'SAE' that steers the hook toward the next token."""
    sae = make_sae()
    with torch.no_grad():
        clean_loss = tiny_model(tiny_tokens, return_type="loss").item()
    # the SAE's b_dec is fit to lower the loss, so splicing it beats the model
    sae.W_dec.data.zero_()
    shift = torch.zeros(16, requires_grad=True)
    optimizer = torch.optim.Adam([shift], lr=0.3)
    for _ in range(15):
        loss = tiny_model.run_with_hooks(
            tiny_tokens, return_type="loss",
            fwd_hooks=[(TINY_HOOK, lambda a, hook: a + shift)],
        )  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        acts = hook_acts(tiny_model, tiny_tokens)
        sae.b_dec.copy_(acts.mean((0, 1)) + shift)
    output = run(sae=sae, model=tiny_model, dataset=tiny_tokens, plugins=["base"],
                 out_dir=tmp_path / "run", n_tokens=10_000)  # fmt: skip
    metrics = base_metrics(output)
    assert metrics["ce_loss_spliced"] < clean_loss
    assert "the SAE lowers the loss" in metrics["ce_warning"]
    card = (output.run_dir / "README.md").read_text()
    assert "**Warning: " in card


# --- naming an SAE passed as an object ---------------------------------------------


def test_an_sae_object_is_named_from_its_metadata(tiny_model, tiny_tokens, tmp_path):
    output = run(sae=make_sae(), model=tiny_model, dataset=tiny_tokens,
                 plugins=["base"], out_dir=tmp_path / "a", n_tokens=300)  # fmt: skip
    assert (output.summary["release"], output.summary["sae_id"]) == ("tiny", TINY_HOOK)
    card = (output.run_dir / "README.md").read_text()
    assert f"# sae-lens-ext analyses of tiny / {TINY_HOOK}" in card
    sae = make_sae()
    sae.cfg.metadata.release = "me/tiny-saes"
    sae.cfg.metadata.sae_id = "layer0"
    named = run(sae=sae, model=tiny_model, dataset=tiny_tokens, plugins=["base"],
                out_dir=tmp_path / "b", n_tokens=300)  # fmt: skip
    assert (named.summary["release"], named.summary["sae_id"]) == (
        "me/tiny-saes",
        "layer0",
    )
