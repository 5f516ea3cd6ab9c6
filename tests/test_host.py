"""The host: plugin discovery and enablement, the shared pass, run outputs."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from conftest import make_sae, run_tiny

from sae_lens_ext import run
from sae_lens_ext.cli import build_cli
from sae_lens_ext.plugins import get_registry, resolve_enabled
from sae_lens_ext.runner import RunError

BUILT_IN = ["absorption", "llc", "mdl", "meta_sae", "tokenized"]


def tiny_run(tiny_model, tiny_tokens, tmp_path, **kwargs):
    """Run on the tiny fixtures with only the base analysis by default."""
    return run_tiny(tiny_model, tiny_tokens, tmp_path / "run", **kwargs)


def test_built_in_plugins_are_found_through_entry_points():
    names = get_registry().plugin_names()
    assert set(BUILT_IN) <= set(names)


def test_resolve_enabled_selection_disable_and_env(monkeypatch):
    available = ["mdl", "llc", "absorption"]
    monkeypatch.delenv("SAE_LENS_EXT_PLUGINS", raising=False)
    assert resolve_enabled(None, available) == ["base", *available]
    assert resolve_enabled("mdl,absorption", available) == ["base", "mdl", "absorption"]
    assert resolve_enabled(["no:llc"], available) == ["base", "mdl", "absorption"]
    assert resolve_enabled(["mdl", "no:base"], available) == ["mdl"]
    monkeypatch.setenv("SAE_LENS_EXT_PLUGINS", "llc")
    assert resolve_enabled(None, available) == ["base", "llc"]
    with pytest.raises(ValueError, match="Did you mean 'mdl'"):
        resolve_enabled("mld", available)


def test_base_metrics_match_a_direct_computation(tiny_model, tiny_tokens, tmp_path):
    sae = make_sae()
    output = tiny_run(tiny_model, tiny_tokens, tmp_path, sae=sae, n_tokens=768)
    metrics = output.summary["analyses"]["base"]["metrics"]
    _, cache = tiny_model.run_with_cache(
        tiny_tokens, names_filter="blocks.0.hook_resid_post"
    )
    x = cache["blocks.0.hook_resid_post"][:, 1:].reshape(-1, 16)
    with torch.no_grad():
        feats = sae.encode(x)
        err = (x - sae.decode(feats)).pow(2).sum()
    assert metrics["n_tokens"] == x.shape[0]
    assert metrics["l0"] == pytest.approx(
        (feats != 0).sum(-1).float().mean().item(), rel=1e-5
    )
    total = (x - x.mean(0)).pow(2).sum()
    assert metrics["explained_variance"] == pytest.approx(
        1 - (err / total).item(), rel=1e-4
    )
    # CE is spliced on the first ce_batches (2) batches of 8 sequences; float32
    # rounding is ~1e-7 relative (the SAE-spliced losses are checked against a
    # hand-spliced model in test_oracles_ce.py).
    with torch.no_grad():
        clean = tiny_model(tiny_tokens[:16], return_type="loss").item()
    assert metrics["ce_loss_clean"] == pytest.approx(clean, rel=1e-5)


def test_run_directory_layout(tiny_model, tiny_tokens, tmp_path):
    output = tiny_run(tiny_model, tiny_tokens, tmp_path)
    run_dir = output.run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["versions"]["sae-lens"]
    for name in ("latents.parquet", "latents.csv", "feature_density.png"):
        assert (run_dir / "base" / name).is_file()
    card = (run_dir / "README.md").read_text()
    assert "Base metrics" in card
    stages = summary["stage_seconds"]
    assert set(stages) == {"setup", "shared_pass", "base", "other"}
    assert all(seconds >= 0 for seconds in stages.values())
    # the stages partition the run's wall time (each rounded to 0.01 s)
    assert sum(stages.values()) == pytest.approx(summary["duration_s"], abs=0.03)


def test_run_refuses_a_non_empty_out_dir(tiny_model, tiny_tokens, tmp_path):
    keep = tmp_path / "run" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    with pytest.raises(RunError, match="--overwrite"):
        tiny_run(tiny_model, tiny_tokens, tmp_path)
    with pytest.raises(RunError, match="not a sae-lens-ext run directory"):
        tiny_run(tiny_model, tiny_tokens, tmp_path, overwrite=True)
    assert keep.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_wrong_d_in_names_the_fix_and_keeps_files(tiny_model, tiny_tokens, tmp_path):
    with pytest.raises(RunError, match="d_in=8"):
        tiny_run(tiny_model, tiny_tokens, tmp_path, sae=make_sae(d_in=8))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    base = summary["analyses"]["base"]
    assert summary["status"] == "failed" and "d_in=8" in base["error"]
    assert "ActivationError" in base["error"] and "metrics" not in base


def test_unknown_config_option_lists_the_fields(tiny_model, tiny_tokens, tmp_path):
    with pytest.raises(RunError, match="ce_batches"):
        tiny_run(tiny_model, tiny_tokens, tmp_path, config={"base": {"ce_batch": 1}})


def test_activation_cache_is_reused(tiny_model, tiny_tokens, tmp_path):
    cache = tmp_path / "cache"
    first = tiny_run(tiny_model, tiny_tokens, tmp_path, cache_dir=cache)
    shards = list(cache.glob("*/shard_*.safetensors"))
    assert shards and list(cache.glob("*/manifest.json"))

    second = run(
        sae=make_sae(),
        model=model_that_must_not_run(tiny_model),
        dataset=tiny_tokens,
        plugins="base",
        out_dir=tmp_path / "again",
        n_tokens=400,
        batch_size=8,
        cache_dir=cache,
        config={"base": {"ce_batches": 0}},
    )
    a = first.summary["analyses"]["base"]["metrics"]
    b = second.summary["analyses"]["base"]["metrics"]
    assert a["explained_variance"] == pytest.approx(b["explained_variance"])
    assert a["n_tokens"] == b["n_tokens"]


def model_that_must_not_run(model):
    """A copy of ``model`` (same weights) whose forward pass fails the test."""
    import copy

    blocked = copy.deepcopy(model)

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not run when the cache exists")

    blocked.run_with_cache = refuse
    return blocked


def test_cli_lists_plugins_and_config_options():
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(BUILT_IN) <= set(rows)
    assert rows["mdl"]["distribution"] == "sae-lens-ext"
    help_text = runner.invoke(build_cli(), ["run", "--help"]).output
    assert "--base.ce_batches" in help_text
    assert "--plugins" in help_text


THIRD_PARTY = textwrap.dedent(
    '''
    """A third-party analysis: the mean activation norm."""
    from dataclasses import dataclass

    from sae_lens_ext import Analysis, AnalysisResult, hookimpl


    @dataclass
    class NormConfig:
        scale: float = 1.0


    class NormAnalysis(Analysis):
        name = "norm"
        title = "Activation norm"
        config_class = NormConfig
        needs = frozenset({"activations"})

        def __init__(self, config, context):
            super().__init__(config, context)
            self.total, self.n = 0.0, 0

        def update(self, batch):
            self.total += batch.sae_in.norm(dim=-1).sum().item()
            self.n += batch.n

        def finish(self):
            mean = self.config.scale * self.total / self.n
            return AnalysisResult(metrics={"mean_norm": mean}, card="norms")


    @hookimpl
    def register_analyses(register):
        register(NormAnalysis)
    '''
)


@pytest.fixture
def third_party_plugin(tmp_path, monkeypatch, fresh_registry):
    """A throwaway installed distribution exposing one plugin."""
    site = tmp_path / "site"
    (site / "norm_plugin.py").parent.mkdir()
    (site / "norm_plugin.py").write_text(THIRD_PARTY)
    dist = site / "norm_plugin-0.3.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: norm-plugin\nVersion: 0.3.0\n"
    )
    (dist / "entry_points.txt").write_text("[sae_lens_ext]\nnorm = norm_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("norm_plugin", None)


def test_third_party_plugin_is_found_listed_and_run(
    third_party_plugin, tiny_model, tiny_tokens, tmp_path
):
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["plugins", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["norm"]["distribution"] == "norm-plugin"
    assert rows["norm"]["version"] == "0.3.0"
    assert rows["norm"]["hooks"] == ["register_analyses"]
    assert rows["norm"]["analyses"] == ["norm"]
    output = tiny_run(
        tiny_model,
        tiny_tokens,
        tmp_path,
        plugins=["norm"],
        config={"norm": {"scale": 2.0}},
    )
    metrics = output.summary["analyses"]["norm"]["metrics"]
    assert metrics["mean_norm"] > 0
    assert output.summary["analyses"]["norm"]["plugin"] == "norm"
    assert "Activation norm" in (output.run_dir / "README.md").read_text()


def test_missing_extra_names_the_install_command():
    from sae_lens_ext.extras import MissingExtraError, require

    with pytest.raises(MissingExtraError, match=r"pip install 'sae-lens-ext\[bench\]'"):
        require("no_such_module_xyz", "bench", "Comparing against devinterp")
    assert require("json", "bench", "JSON").dumps([1]) == "[1]"


def test_a_broken_plugin_is_listed_not_fatal(tmp_path, monkeypatch, fresh_registry):
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_plugin.py").write_text("raise ImportError('needs frobnicate')\n")
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text("[sae_lens_ext]\nbroken = broken_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    result = CliRunner().invoke(build_cli(), ["plugins"])
    assert result.exit_code == 0, result.output
    assert (
        "broken 1.0 (broken-plugin): FAILED to load: ImportError: needs frobnicate"
        in result.output
    )
    assert "mdl" in result.output
