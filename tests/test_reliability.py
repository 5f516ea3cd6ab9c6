"""Bad input, bad plugins and stale caches never yield a result that looks valid.

Each test feeds one bad input and checks the message (naming the option or
file to fix) and what is on disk afterwards.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner
from conftest import make_sae
from conftest import run_tiny as tiny_run

from sae_lens_ext import Analysis, AnalysisResult, hookimpl, load_sae, run
from sae_lens_ext.cli import build_cli, main
from sae_lens_ext.errors import RunError, RunInterrupted
from sae_lens_ext.legacy_config import LegacyConfigWarning
from sae_lens_ext.plugins import get_registry, resolve_enabled
from sae_lens_ext.runner import RunWarning
from sae_lens_ext.shared_pass import ActivationError
from sae_lens_ext.tokens import DatasetError
from sae_lens_ext.validation import InputError


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


# --------------------------------------------------------------- plugins


@dataclass
class ScoreConfig:
    """Options of the test analyses."""

    value: float = 1.0


def analysis_class(name, *, needs=("activations",), fail_in=None, score=None):
    """An analysis ``name`` that fails in ``fail_in`` or reports ``score``."""

    class TestAnalysis(Analysis):
        config_class = ScoreConfig
        headline_metrics = ("score",)

        def __init__(self, config, context):
            if fail_in == "__init__":
                raise RuntimeError(f"{name} cannot start")
            super().__init__(config, context)
            self.rows = 0

        def update(self, batch):
            if fail_in == "update" and batch.offset > 0:
                raise RuntimeError(f"{name} broke on a batch")
            if fail_in == "interrupt":
                raise KeyboardInterrupt
            self.rows += batch.n

        def finish(self):
            if fail_in == "finish":
                raise RuntimeError(f"{name} cannot finish")
            value = self.config.value if score is None else score
            return AnalysisResult(
                metrics={"score": value, "rows": self.rows},
                tensors={"rows": torch.tensor([self.rows])},
                card=f"{name} card",
            )

    TestAnalysis.name = name
    TestAnalysis.title = name
    TestAnalysis.needs = frozenset(needs)
    return TestAnalysis


def plugin_of(*classes):
    """A plugin object registering ``classes``."""

    class Plugin:
        @staticmethod
        @hookimpl
        def register_analyses(register):
            for cls in classes:
                register(cls)

    return Plugin


@pytest.fixture
def with_plugins(fresh_registry):
    """Register plugin objects in a fresh registry: ``with_plugins(name=plugin)``."""

    def register(**plugins):
        registry = get_registry()
        for name, plugin in plugins.items():
            registry.register(plugin, name)
        return registry

    return register


def install_dist(tmp_path, monkeypatch, module: str, source: str) -> None:
    """Install a throwaway distribution whose entry point is ``module``."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[sae_lens_ext]\n{module.removesuffix('_plugin')} = {module}\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, module, raising=False)


# --------------------------------------------------------- activation cache


def cached_run(tiny_model, tokens, tmp_path, name, cache, **kwargs):
    return tiny_run(
        tiny_model,
        tokens,
        tmp_path / name,
        cache_dir=cache,
        config={"base": {"ce_batches": 0}},
        **kwargs,
    )


def test_cache_follows_the_token_content_not_the_path(
    tiny_model, tiny_tokens, tmp_path
):
    from safetensors.torch import save_file

    path = tmp_path / "tokens.safetensors"
    cache = tmp_path / "cache"
    save_file({"tokens": tiny_tokens}, path)
    cached_run(tiny_model, str(path), tmp_path, "a", cache)
    edited = tiny_tokens.flip(1).contiguous()
    edited[:, 0] = 0
    save_file({"tokens": edited}, path)

    again = cached_run(tiny_model, str(path), tmp_path, "b", cache)
    fresh = cached_run(tiny_model, edited, tmp_path, "c", None)

    assert len(list(cache.glob("*/manifest.json"))) == 2
    a = again.summary["analyses"]["base"]["metrics"]
    b = fresh.summary["analyses"]["base"]["metrics"]
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-6)


def test_cache_follows_the_model_weights(tiny_model, tiny_tokens, tmp_path):
    cache = tmp_path / "cache"
    cached_run(tiny_model, tiny_tokens, tmp_path, "a", cache)
    tuned = copy.deepcopy(tiny_model)
    with torch.no_grad():
        tuned.W_E.mul_(1.5)
    again = cached_run(tuned, tiny_tokens, tmp_path, "b", cache)
    fresh = cached_run(tuned, tiny_tokens, tmp_path, "c", None)
    assert len(list(cache.glob("*/manifest.json"))) == 2
    assert again.summary["analyses"]["base"]["metrics"]["mse"] == pytest.approx(
        fresh.summary["analyses"]["base"]["metrics"]["mse"], rel=1e-6
    )


@pytest.fixture
def filled_cache(tiny_model, tiny_tokens, tmp_path):
    """A cache of 4 shards (n_tokens 300, batch 8 of 12-token rows)."""
    cache = tmp_path / "cache"
    cached_run(tiny_model, tiny_tokens, tmp_path, "first", cache, n_tokens=300)
    (folder,) = list(cache.iterdir())
    assert len(list(folder.glob("shard_*.safetensors"))) == 4
    return folder


def assert_refused(tiny_model, tiny_tokens, tmp_path, folder, match):
    out = tmp_path / "second"
    with pytest.raises(ActivationError, match=match) as caught:
        cached_run(
            tiny_model, tiny_tokens, tmp_path, "second", folder.parent, n_tokens=300
        )
    assert f"delete {folder} to rebuild" in str(caught.value)
    summary = summary_of(out)
    assert summary["status"] == "failed" and "delete" in summary["error"]
    assert not (out / "base" / "latents.parquet").exists()
    assert "metrics" not in summary["analyses"].get("base", {})


def test_altered_shard_values_are_refused(
    tiny_model, tiny_tokens, tmp_path, filled_cache
):
    from safetensors.torch import load_file, save_file

    shard = filled_cache / "shard_00001.safetensors"
    tensors = load_file(shard)
    tensors["sae_in"] = tensors["sae_in"] * 1.3  # finite, plausible, wrong
    save_file(tensors, shard)
    assert_refused(
        tiny_model, tiny_tokens, tmp_path, filled_cache, "does not match its checksum"
    )


def test_manifest_listing_fewer_shards_is_refused(
    tiny_model, tiny_tokens, tmp_path, filled_cache
):
    manifest = filled_cache / "manifest.json"
    info = json.loads(manifest.read_text())
    info["shards"] = info["shards"][:2]
    info["n_shards"] = 2
    info["n_rows"] = sum(s["rows"] for s in info["shards"])
    manifest.write_text(json.dumps(info))
    assert_refused(
        tiny_model, tiny_tokens, tmp_path, filled_cache, "4 shard files but manifest"
    )


def test_broken_manifest_says_delete_to_rebuild(
    tiny_model, tiny_tokens, tmp_path, filled_cache
):
    (filled_cache / "manifest.json").write_text('{"shards": [')
    assert_refused(
        tiny_model, tiny_tokens, tmp_path, filled_cache, "manifest.json is unreadable"
    )


def test_missing_shard_is_refused(tiny_model, tiny_tokens, tmp_path, filled_cache):
    (filled_cache / "shard_00003.safetensors").unlink()
    assert_refused(
        tiny_model, tiny_tokens, tmp_path, filled_cache, "3 shard files but manifest"
    )


# ------------------------------------------------------------ run directory


def test_overwrite_leaves_only_the_new_run(
    with_plugins, tiny_model, tiny_tokens, tmp_path
):
    with_plugins(extra=plugin_of(analysis_class("extra")))
    out = tmp_path / "run"
    tiny_run(tiny_model, tiny_tokens, out, plugins="base,extra")
    assert (out / "extra" / "tensors.safetensors").is_file()

    output = tiny_run(tiny_model, tiny_tokens, out, overwrite=True)

    assert output.run_dir == out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "base",
        "saebench",  # the base analysis as SAEBench's core eval
        "summary.json",
    ]
    assert list(summary_of(out)["analyses"]) == ["base"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_failed_overwrite_keeps_the_earlier_run(
    with_plugins, tiny_model, tiny_tokens, tmp_path
):
    with_plugins(bad=plugin_of(analysis_class("bad", fail_in="finish")))
    out = tmp_path / "run"
    tiny_run(tiny_model, tiny_tokens, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    with pytest.raises(RunError, match="earlier run in .* is unchanged") as caught:
        tiny_run(tiny_model, tiny_tokens, out, plugins="base,bad", overwrite=True)

    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (sibling,) = [p for p in tmp_path.iterdir() if p.name != "run"]
    assert str(sibling) in str(caught.value)
    assert summary_of(sibling)["status"] == "failed"


def test_ctrl_c_marks_the_run_interrupted(
    with_plugins, tiny_model, tiny_tokens, tmp_path
):
    with_plugins(stop=plugin_of(analysis_class("stop", fail_in="interrupt")))
    out = tmp_path / "run"
    with pytest.raises(
        RunInterrupted, match=f"interrupted; finished analyses kept in {out}"
    ):
        tiny_run(tiny_model, tiny_tokens, out, plugins="base,stop")
    assert summary_of(out)["status"] == "interrupted"


def test_ctrl_c_exits_130_on_the_command_line(
    with_plugins, tmp_path, monkeypatch, capsys
):
    with_plugins(stop=plugin_of(analysis_class("stop", fail_in="interrupt")))
    out = tmp_path / "run"
    argv = ["sae-lens-ext", "run", "-p", "no:base,stop", "--n-tokens", "256"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 130
    assert f"interrupted; finished analyses kept in {out}" in capsys.readouterr().err
    assert summary_of(out)["status"] == "interrupted"


# --------------------------------------------------------------- options


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if the SAE or the model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("validation must come before loading")

    monkeypatch.setattr("sae_lens_ext.runner.load_sae", refuse)
    monkeypatch.setattr("sae_lens_ext.runner.model_for_sae", refuse)
    monkeypatch.setattr("sae_lens_ext.runner.load_model", refuse)


@pytest.mark.parametrize(
    "options, named",
    [
        ({"n_tokens": 0}, "--n-tokens must be a positive integer, got 0"),
        ({"batch_size": -4}, "--batch-size must be a positive integer, got -4"),
        ({"device": "tpu9"}, "--device 'tpu9' is not a device torch knows"),
        ({"config": {"mdl": {"tolerance": -1.0}}}, "--mdl.tolerance -1.0"),
        ({"config": {"llc": {"max_tokens": 0}}}, "--llc.max_tokens 0"),
        ({"config": {"llc": {"num_chains": 0}}}, "--llc.num_chains 0"),
        ({"config": {"meta_sae": {"steps": 0}}}, "--meta_sae.steps 0"),
        ({"config": {"tokenized": {"lr": -1.0}}}, "--tokenized.lr -1.0"),
        ({"config": {"absorption": {"l1_penalty": 0.0}}}, "--absorption.l1_penalty"),
        ({"config": {"mdl": {"tolerance": math.nan}}}, "--mdl.tolerance nan"),
    ],
)
def test_bad_options_are_named_before_anything_loads(
    nothing_loads, tmp_path, options, named
):
    out = tmp_path / "run"
    with pytest.raises(InputError) as caught:
        run("sae-lens-ext/demo", out_dir=out, **options)
    assert named in str(caught.value)
    assert not out.exists()


def test_cuda_without_a_cuda_build_is_named(nothing_loads, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(InputError, match="--device 'cuda'.*no CUDA support"):
        run("sae-lens-ext/demo", out_dir=tmp_path / "run", device="cuda")


def test_cli_names_the_plugin_option(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        build_cli(), ["run", "-p", "mdl", "--mdl.tolerance", "-1", "--out", str(out)]
    )
    assert result.exit_code != 0
    assert "--mdl.tolerance -1.0" in str(result.exception)
    assert "tolerance must be >= 0" in str(result.exception)
    assert not out.exists()


def test_fewer_tokens_than_asked_warns_with_the_real_count(
    tiny_model, tiny_tokens, tmp_path
):
    with pytest.warns(RunWarning, match="asked for 1,000,000 tokens .* only 704"):
        output = tiny_run(tiny_model, tiny_tokens, tmp_path / "run", n_tokens=10**6)
    assert (
        "only 704 (64 sequences of 12, every position but the first (BOS excluded))"
        in output.summary["warnings"][0]
    )
    assert output.summary["analyses"]["base"]["metrics"]["n_tokens"] == 704
    assert output.summary["status"] == "complete"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.float(), "token ids must be integers, got dtype torch.float32"),
        (
            lambda t: t.index_put_(
                (torch.tensor(3), torch.tensor(5)), torch.tensor(-1)
            ),
            "token id -1 at sequence 3, position 5 is outside the model's "
            "vocabulary [0, 40)",
        ),
        (
            lambda t: t.index_put_(
                (torch.tensor(7), torch.tensor(2)), torch.tensor(40)
            ),
            "token id 40 at sequence 7, position 2",
        ),
        (
            lambda t: torch.cat([t, t[:, 1:]], dim=1),
            "sequences have 23 positions but the model's context (n_ctx) is 12",
        ),
    ],
)
def test_bad_token_ids_are_refused_before_the_run_starts(
    tiny_model, tiny_tokens, tmp_path, edit, message
):
    out = tmp_path / "run"
    with pytest.raises(InputError) as caught:
        tiny_run(tiny_model, edit(tiny_tokens.clone()), out)
    assert message in str(caught.value) and "--dataset" in str(caught.value)
    assert not out.exists()


def test_sae_context_longer_than_the_model_is_refused(tiny_model, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be " * 50)
    sae = make_sae()
    sae.cfg.metadata.context_size = 64
    with pytest.raises(InputError, match="context_size is 64, longer than .* n_ctx 12"):
        tiny_run(tiny_model, str(text), tmp_path / "run", sae=sae)
    assert not (tmp_path / "run").exists()


def test_non_utf8_text_names_the_file_and_offset(tiny_model, tmp_path):
    text = tmp_path / "latin1.txt"
    text.write_bytes(b"to be or not to be, " + "café".encode("latin-1"))
    with pytest.raises(DatasetError) as caught:
        tiny_run(tiny_model, str(text), tmp_path / "run")
    message = str(caught.value)
    assert str(text) in message and "offset 23" in message and "0xe9" in message
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------- SAE weights and configs


@pytest.mark.parametrize("parameter", ["W_dec", "b_enc"])
def test_non_finite_sae_weights_are_refused_at_load(tmp_path, parameter):
    sae = make_sae()
    with torch.no_grad():
        getattr(sae, parameter).view(-1)[3] = (
            math.nan if parameter == "W_dec" else math.inf
        )
    sae.save_model(tmp_path / "sae")
    with pytest.raises(InputError, match=f"SAE parameter {parameter} has 1 NaN"):
        load_sae(str(tmp_path / "sae"))


def test_run_refuses_an_sae_object_with_nan_weights(tiny_model, tiny_tokens, tmp_path):
    sae = make_sae()
    with torch.no_grad():
        sae.W_enc[0, 0] = math.nan
    with pytest.raises(InputError, match="W_enc has 1 NaN"):
        tiny_run(tiny_model, tiny_tokens, tmp_path / "run", sae=sae)
    assert not (tmp_path / "run").exists()


def strip_version(folder, layout):
    cfg = json.loads((folder / "cfg.json").read_text())
    metadata = cfg.pop("metadata")
    metadata.pop("sae_lens_version")
    metadata.pop("sae_lens_training_version", None)
    if layout == "nested":
        cfg["metadata"] = metadata
    elif layout == "top-level":
        cfg.update(metadata)
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("layout", ["nested", "top-level"])
def test_config_without_sae_lens_version_keeps_hook_and_model(tmp_path, layout):
    make_sae().save_model(tmp_path / layout)
    strip_version(tmp_path / layout, layout)
    with pytest.warns(LegacyConfigWarning, match="no metadata.sae_lens_version"):
        sae = load_sae(str(tmp_path / layout))
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert sae.cfg.metadata.model_name == "tiny"
    assert sae.cfg.metadata.context_size == 12


def test_config_naming_no_hook_says_so(tmp_path):
    sae = make_sae()
    sae.cfg.metadata.hook_name = None
    sae.save_model(tmp_path / "sae")
    strip_version(tmp_path / "sae", "nested")
    with pytest.warns(LegacyConfigWarning, match="names no hook_name"):
        load_sae(str(tmp_path / "sae"))


def test_nan_activations_mid_pass_fail_their_consumers_only(
    with_plugins, tiny_model, tiny_tokens, tmp_path
):
    with_plugins(w=plugin_of(analysis_class("weights_only", needs=("weights",))))
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.W_E[39].fill_(math.nan)
    tokens = tiny_tokens.clone()
    tokens[tokens == 39] = 38
    tokens[20, 4] = 39  # sequence 20 is in batch 2 (8 sequences per batch)
    out = tmp_path / "run"
    with pytest.raises(RunError, match="batch 2 \\(rows 176-263\\)"):
        tiny_run(broken, tokens, out, plugins="base,w", n_tokens=768)
    summary = summary_of(out)
    assert summary["status"] == "failed"
    assert "NaN or inf" in summary["analyses"]["base"]["error"]
    assert not (out / "base" / "latents.parquet").exists()
    assert summary["analyses"]["weights_only"]["metrics"]["score"] == 1.0


def test_null_headline_metric_fails_the_analysis(
    with_plugins, tiny_model, tiny_tokens, tmp_path
):
    with_plugins(n=plugin_of(analysis_class("nanny", score=math.nan)))
    out = tmp_path / "run"
    with pytest.raises(RunError, match="headline metrics score came out null"):
        tiny_run(tiny_model, tiny_tokens, out, plugins="base,n")
    summary = summary_of(out)
    assert summary["status"] == "failed"
    assert summary["analyses"]["nanny"]["metrics"]["score"] is None
    assert not (out / "nanny").exists() or not any((out / "nanny").iterdir())
    assert summary["analyses"]["base"]["metrics"]["mse"] > 0


# ---------------------------------------------------------------- plugins


@pytest.mark.parametrize("step", ["__init__", "update", "finish"])
def test_one_failing_analysis_does_not_lose_the_others(
    with_plugins, tiny_model, tiny_tokens, tmp_path, step
):
    with_plugins(
        broken=plugin_of(analysis_class("flaky", fail_in=step)),
        good=plugin_of(analysis_class("steady")),
    )
    out = tmp_path / "run"
    with pytest.raises(RunError) as caught:
        tiny_run(tiny_model, tiny_tokens, out, plugins="base,broken,good")
    assert f"analysis 'flaky' (plugin 'broken') failed in {step}" in str(caught.value)
    summary = summary_of(out)
    flaky = summary["analyses"]["flaky"]
    assert flaky["plugin"] == "broken" and flaky["failed_in"].startswith(step)
    assert "Traceback" in flaky["traceback"] and "RuntimeError" in flaky["traceback"]
    assert summary["analyses"]["steady"]["metrics"]["rows"] == 374
    assert summary["analyses"]["base"]["metrics"]["n_tokens"] == 374
    assert (out / "steady" / "tensors.safetensors").is_file()
    assert (out / "base" / "latents.parquet").is_file()


def test_duplicate_analysis_name_refuses_the_later_one(
    with_plugins, tiny_model, tiny_tokens, tmp_path
):
    first, second = analysis_class("twin"), analysis_class("twin", score=2.0)
    with_plugins(one=plugin_of(first), two=plugin_of(second))
    runner = CliRunner()
    listing = runner.invoke(build_cli(), ["plugins"])
    assert listing.exit_code == 0, listing.output
    assert "plugin 'one' already registers an analysis of that name" in listing.output
    assert runner.invoke(build_cli(), ["run", "--help"]).exit_code == 0
    with pytest.warns(RunWarning, match="analysis 'twin' was not registered"):
        output = tiny_run(tiny_model, tiny_tokens, tmp_path / "run", plugins="base,one")
    assert output.summary["analyses"]["twin"]["plugin"] == "one"
    assert output.summary["analyses"]["twin"]["metrics"]["score"] == 1.0


def test_a_broken_plugin_warns_in_every_run_and_says_why(
    tmp_path, monkeypatch, fresh_registry, tiny_model, tiny_tokens
):
    install_dist(
        tmp_path, monkeypatch, "broken_plugin", "raise ImportError('needs frob')\n"
    )
    for name in ("a", "b"):
        with pytest.warns(RunWarning, match="'broken' failed to load .* needs frob"):
            output = tiny_run(tiny_model, tiny_tokens, tmp_path / name)
        assert "needs frob" in output.summary["warnings"][0]
    with pytest.raises(ValueError, match="'broken' is installed but failed to load"):
        tiny_run(tiny_model, tiny_tokens, tmp_path / "c", plugins="broken")
    registry = get_registry()
    enabled = resolve_enabled(
        "no:broken", registry.plugin_names(), registry.load_errors()
    )
    assert "broken" not in enabled and "mdl" in enabled


def test_a_misspelled_hookimpl_fails_that_plugin_at_load(
    tmp_path, monkeypatch, fresh_registry
):
    install_dist(
        tmp_path,
        monkeypatch,
        "typo_plugin",
        """
        from sae_lens_ext import hookimpl

        @hookimpl
        def register_analysis(register):
            pass
        """,
    )
    registry = get_registry()
    assert "typo" not in registry.plugin_names()
    error = registry.load_errors()["typo"]
    assert "register_analysis" in error and "register_analyses" in error
    listing = CliRunner().invoke(build_cli(), ["plugins"])
    assert "typo 1.0 (typo-plugin): FAILED to load" in listing.output


def test_hub_config_without_sae_lens_version_keeps_hook_and_model(tmp_path):
    from conftest import prefill_hf_cache, run_offline

    prefill_hf_cache(tmp_path / "hub", "someone/old-saes", "layer0", make_sae())
    (snapshot,) = (tmp_path / "hub").glob("models--*/snapshots/*")
    strip_version(snapshot / "layer0", "nested")
    hook, model = run_offline(
        """
        import warnings
        from sae_lens_ext import load_sae
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sae = load_sae("someone/old-saes", "layer0")
        assert any("sae_lens_version" in str(w.message) for w in caught), caught
        print("LOADED", sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name)
        """,
        tmp_path / "hub",
        tmp_path / "hf-home",
    )
    assert (hook, model) == ("blocks.0.hook_resid_post", "tiny")
