"""Sweeps: one model pass per batch for many SAEs, resumable, isolated, compared.

A "release" here is a folder of SAE-Lens SAE folders on the tiny model, at
two hooks, so a group's pass must capture both hooks at once.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_HOOK, make_sae

import sae_lens_ext
from sae_lens_ext.errors import RunError
from sae_lens_ext.sweep import sweep
from sae_lens_ext.sweep_plan import describe_sae, estimate_group_bytes, plan_groups

PRE_HOOK = "blocks.0.hook_resid_pre"
SAES = {
    "post-48": dict(d_sae=48, hook_name=TINY_HOOK, seed=0),
    "post-96": dict(d_sae=96, hook_name=TINY_HOOK, seed=1),
    "pre-64": dict(d_sae=64, hook_name=PRE_HOOK, seed=2),
}
OPTIONS = dict(plugins="base,mdl", n_tokens=400, batch_size=8, device="cpu")


@pytest.fixture
def release(tmp_path):
    """A folder release of three SAEs on the tiny model at two hooks."""
    folder = tmp_path / "release"
    for sae_id, kwargs in SAES.items():
        make_sae(**kwargs).save_model(folder / sae_id)
    return str(folder)


def metrics(summary: dict) -> dict:
    return {n: e.get("metrics") for n, e in summary["analyses"].items()}


def read_summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def count_forwards(model):
    """A list that grows by one per forward pass of ``model``."""
    calls = []
    handle = model.embed.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def sweep_and_separate_runs(release, model, tokens, tmp_path, **options):
    """A sweep and one run per SAE; each side's count of model forward passes."""
    calls, handle = count_forwards(model)
    try:
        common = dict(model=model, dataset=tokens, **options)
        out = sweep(release, out_dir=tmp_path / "sweep", **common)
        sweep_forwards = len(calls)
        calls.clear()
        separate = {
            sae_id: sae_lens_ext.run(
                release, sae_id, out_dir=tmp_path / "single" / sae_id, **common
            )
            for sae_id in SAES
        }
    finally:
        handle.remove()
    return out, sweep_forwards, separate, len(calls)


def test_sweep_matches_separate_runs_with_one_forward_per_batch(
    release, tiny_model, tiny_tokens, tmp_path
):
    out, sweep_forwards, separate, separate_forwards = sweep_and_separate_runs(
        release,
        tiny_model,
        tiny_tokens,
        tmp_path,
        **{**OPTIONS, "config": {"base": {"ce_batches": 0}}},
    )
    assert out.failures == {}
    assert out.groups == [sorted(SAES, key=lambda i: SAES[i]["hook_name"])]
    batches = math.ceil(math.ceil(400 / 12) / 8)  # 34 sequences of 12, 8 a batch
    assert sweep_forwards == batches  # one forward per batch for all three SAEs
    assert separate_forwards == len(SAES) * batches  # separate runs: one pass each
    for sae_id, single in separate.items():
        swept = read_summary(out.sweep_dir / sae_id)
        assert swept["status"] == "complete"
        assert swept["hook_name"] == SAES[sae_id]["hook_name"]
        assert metrics(swept) == metrics(single.summary), sae_id


@pytest.mark.parametrize("sharing", ["works", "fails"])
def test_spliced_ce_shared_per_hook_equals_separate_runs(
    release, tiny_model, tiny_tokens, tmp_path, monkeypatch, sharing
):
    """The SAEs at one hook share the clean and ablated CE passes, same metrics."""
    import sae_lens_ext.sweep_downstream as sweep_downstream

    options = {**OPTIONS, "plugins": "base", "config": {"base": {"ce_batches": 2}}}
    real = sweep_downstream.downstream_metrics_many
    shared_calls = []

    def spy(model, saes, hook_name, tokens, mask):
        shared_calls.append((hook_name, len(saes)))
        if sharing == "fails":
            raise RuntimeError("out of memory")  # each SAE then computes its own
        return real(model, saes, hook_name, tokens, mask)

    monkeypatch.setattr(sweep_downstream, "downstream_metrics_many", spy)
    out, sweep_forwards, separate, _ = sweep_and_separate_runs(
        release, tiny_model, tiny_tokens, tmp_path, **options
    )
    assert out.failures == {}
    assert shared_calls == [(TINY_HOOK, 2)]  # post-48 and post-96; pre-64 alone
    batches = math.ceil(math.ceil(400 / 12) / 8)
    chunks = 2  # ce_batches 2 x 8 sequences, 8 (LOGIT_CHUNK) at a time
    # one clean pass per chunk per hook; the edited passes start past the embedding
    expected = batches + (2 if sharing == "works" else 3) * chunks
    assert sweep_forwards == expected
    for sae_id, single in separate.items():
        swept = read_summary(out.sweep_dir / sae_id)
        assert swept["status"] == "complete"
        assert metrics(swept) == metrics(single.summary), sae_id
        assert swept["analyses"]["base"]["metrics"]["ce_tokens"] == 16 * 12


def test_sweep_comparison_table_plots_and_card(
    release, tiny_model, tiny_tokens, tmp_path
):
    out = sweep(
        release,
        model=tiny_model,
        dataset=tiny_tokens,
        out_dir=tmp_path / "s",
        **OPTIONS,
    )
    table = pd.read_parquet(out.sweep_dir / "comparison.parquet")
    csv = pd.read_csv(out.sweep_dir / "comparison.csv")
    assert list(table["sae_id"]) == list(SAES) == list(csv["sae_id"])
    assert list(table["width"]) == [s["d_sae"] for s in SAES.values()]
    assert list(table["hook_name"]) == [s["hook_name"] for s in SAES.values()]
    for sae_id in SAES:
        summary = read_summary(out.sweep_dir / sae_id)
        row = table[table["sae_id"] == sae_id].iloc[0]
        assert row["l0"] == summary["analyses"]["base"]["metrics"]["l0"]
        assert row["mdl.bits_per_token"] == pytest.approx(
            summary["analyses"]["mdl"]["metrics"]["bits_per_token"]
        )
    met = table[table["mdl.tolerance_met"].astype(bool)]
    best = met.loc[met["mdl.bits_per_token"].idxmin(), "sae_id"]
    assert list(table.loc[table["mdl_optimal"], "sae_id"]) == [best]
    assert (out.sweep_dir / "comparison_mdl.png").read_bytes()[:4] == b"\x89PNG"
    card = (out.sweep_dir / "README.md").read_text()
    assert "![comparison_mdl](comparison_mdl.png)" in card
    assert f"{best} (MDL-optimal)" in card


def test_rerun_skips_finished_saes_and_retries_failed_ones(
    release, tiny_model, tiny_tokens, tmp_path
):
    options = dict(model=tiny_model, dataset=tiny_tokens, out_dir=tmp_path / "s")
    options.update(OPTIONS, plugins="base")
    first = sweep(release, **options)
    assert first.skipped == []
    again = sweep(release, **options)
    assert sorted(again.skipped) == sorted(SAES) and again.groups == []
    # a run left failed is retried, alone
    summary_path = first.sweep_dir / "post-96" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["status"] = "failed"
    summary_path.write_text(json.dumps(summary))
    third = sweep(release, **options)
    assert third.groups == [["post-96"]]
    assert read_summary(first.sweep_dir / "post-96")["status"] == "complete"
    with pytest.raises(RunError, match="--overwrite"):
        sweep(release, **{**options, "seed": 1})


def test_one_failing_sae_is_recorded_and_the_others_finish(
    release, tiny_model, tiny_tokens, tmp_path
):
    from pathlib import Path

    make_sae(d_in=8, d_sae=24).save_model(Path(release) / "wrong-width")
    make_sae().save_model(Path(release) / "corrupt")
    (Path(release) / "corrupt" / "sae_weights.safetensors").write_bytes(b"not weights")
    out = sweep(
        release,
        model=tiny_model,
        dataset=tiny_tokens,
        out_dir=tmp_path / "s",
        **OPTIONS,
    )
    assert set(out.failures) == {"wrong-width", "corrupt"}
    assert "d_in=8" in out.failures["wrong-width"]
    assert "loading the SAE" in out.failures["corrupt"]
    record = json.loads((out.sweep_dir / "sweep.json").read_text())
    assert record["status"] == "failed"
    assert record["saes"]["wrong-width"]["status"] == "failed"
    assert read_summary(out.sweep_dir / "wrong-width")["status"] == "failed"
    for sae_id in SAES:
        assert record["saes"][sae_id]["status"] == "complete"
    table = out.comparison.set_index("sae_id")
    assert table.loc["wrong-width", "status"] == "failed"
    assert table.loc["corrupt", "status"] == "failed"
    assert table.loc["post-48", "base.l0"] > 0


def test_groups_split_over_memory_budget_give_the_same_metrics(
    release, tiny_model, tiny_tokens, tmp_path
):
    specs = [describe_sae(release, sae_id) for sae_id in SAES]
    rows = 8 * 12
    one = estimate_group_bytes(specs[:1], rows)
    assert estimate_group_bytes(specs, rows) > one
    assert [len(g) for g in plan_groups(specs, rows, one)] == [1, 1, 1]
    assert [len(g) for g in plan_groups(specs, rows, 10 * one)] == [3]
    options = dict(model=tiny_model, dataset=tiny_tokens, **OPTIONS)
    options["plugins"] = "base"
    whole = sweep(release, out_dir=tmp_path / "a", **options)
    split = sweep(
        release, out_dir=tmp_path / "b", memory_budget_gb=one / (1 << 30), **options
    )
    assert len(split.groups) == 3 and len(whole.groups) == 1
    for sae_id in SAES:
        assert metrics(read_summary(split.sweep_dir / sae_id)) == metrics(
            read_summary(whole.sweep_dir / sae_id)
        )


def test_sae_ids_glob_list_and_bad_input(release, tiny_model, tiny_tokens, tmp_path):
    from sae_lens_ext.sweep_plan import select_sae_ids

    assert select_sae_ids(release, "post-*") == ["post-48", "post-96"]
    assert select_sae_ids(release, "pre-64,post-4*") == ["post-48", "pre-64"]
    assert select_sae_ids(release, ["pre-64"]) == ["pre-64"]
    with pytest.raises(RunError, match="matches no SAE"):
        select_sae_ids(release, "mlp-*")
    with pytest.raises(RunError, match="post-48"):
        select_sae_ids(release, ["post-49"])
    with pytest.raises(RunError, match="--executor local or --executor ray"):
        sweep(release, executor="slurm", out_dir=tmp_path / "x")
    with pytest.raises(RunError, match="--executor ray"):
        sweep(release, ray_address="auto", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_sweep_exit_status(release, tiny_model, tiny_tokens, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from sae_lens_ext.cli import build_cli

    tokens = tmp_path / "tokens.safetensors"
    save_file({"tokens": tiny_tokens}, tokens)
    monkeypatch.setattr(
        "sae_lens_ext.sweep_group.load_model", lambda name, device: tiny_model
    )
    args = ["sweep", "--release", release, "--sae-ids", "post-*", "-p", "base"]
    args += ["--model", "tiny", "--dataset", str(tokens), "--n-tokens", "200"]
    args += ["--base.ce_batches", "1", "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "cli" / "comparison.csv")
    assert list(table["sae_id"]) == ["post-48", "post-96"]
    assert set(table["status"]) == {"complete"}
    make_sae(d_in=8, d_sae=24).save_model(tmp_path / "release" / "post-bad")
    result = CliRunner().invoke(build_cli(), [*args[:-1], str(tmp_path / "cli2")])
    assert result.exit_code == 1
    assert "post-bad" in result.output


@pytest.mark.slow
def test_demo_release_sweep_covers_every_sae_of_release_json(tmp_path):
    from sae_lens_ext.demo import demo_release_info, demo_sae_path

    out = sweep(plugins="base", n_tokens=512, batch_size=4, out_dir=tmp_path / "demo")
    ids = list(demo_release_info()["saes"])
    assert list(out.comparison["sae_id"]) == ids and out.failures == {}
    hooks = {
        sae_id: json.loads((demo_sae_path(sae_id) / "cfg.json").read_text())[
            "metadata"
        ]["hook_name"]
        for sae_id in ids
    }
    swept = out.comparison.set_index("sae_id")["hook_name"].to_dict()
    assert swept == hooks
    assert len(out.groups) == 1  # one model: one group, one pass
    assert torch.tensor(list(out.comparison["l0"])).gt(0).all()


def test_push_publishes_a_sweep_and_every_sae_loads_back(
    release, tiny_model, tiny_tokens, tmp_path, hub, monkeypatch
):
    from hub_double import TOKEN
    from sae_lens import SAE

    from sae_lens_ext.cli import build_cli

    out = sweep(
        release,
        plugins="base,meta_sae",
        config={"meta_sae": {"steps": 50, "d_meta": 8, "k": 2}},
        model=tiny_model,
        dataset=tiny_tokens,
        n_tokens=200,
        batch_size=8,
        device="cpu",
        out_dir=tmp_path / "s",
    )
    assert out.failures == {}
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = CliRunner().invoke(
        build_cli(), ["push", str(out.sweep_dir), "alice/tiny-sweep"]
    )
    assert result.exit_code == 0, result.output
    files = hub.files("alice/tiny-sweep")
    for name in ("README.md", "comparison.parquet", "comparison.csv", "sweep.json"):
        assert name in files
    card = files["README.md"].decode()
    assert "<repo_id>" not in card and "alice/tiny-sweep" in card
    folders = sorted(
        p.parent.relative_to(out.sweep_dir).as_posix()
        for p in out.sweep_dir.glob("*/*/*/cfg.json")
    )
    assert {f.split("/")[0] for f in folders} == set(SAES)  # a meta-SAE per SAE
    for folder in folders:
        assert f'SAE.from_pretrained("alice/tiny-sweep", "{folder}")' in card
        assert f"{folder.split('/')[0]}/summary.json" in files
        local = SAE.load_from_disk(out.sweep_dir / folder)
        loaded = SAE.from_pretrained("alice/tiny-sweep", folder)
        assert loaded.cfg.to_dict() == local.cfg.to_dict()
        for name, value in local.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), (folder, name)


@pytest.mark.parametrize("revision", ["", 5])
def test_push_sweep_checks_revision_like_a_run_push(hub, tmp_path, revision):
    """One option check for both pushes: a bad revision fails before any file or request."""
    from hub_double import TOKEN

    from sae_lens_ext.hub import push_to_hub
    from sae_lens_ext.sweep_hub import push_sweep

    missing = tmp_path / "no-such-sweep"  # the check comes before reading anything
    for push in (push_sweep, push_to_hub):
        with pytest.raises(
            ValueError, match=r"revision must be a branch name.*--revision"
        ):
            push(missing, "alice/tiny-sweep", token=TOKEN, revision=revision)
    assert hub.requests == []


def test_mdl_optimal_ignores_saes_that_missed_the_tolerance_and_all_plots_drawn():
    import matplotlib.pyplot as plt

    from sae_lens_ext.comparison import comparison_plots, mdl_optimal

    table = pd.DataFrame(
        {
            "sae_id": ["a", "b", "c", "d"],
            "hook_name": ["h0", "h0", "h1", "h1"],
            "width": [512, 1024, 512, 1024],
            "l0": [16.0, 16.0, 30.0, 8.0],
            "mdl.bits_per_token": [120.0, 110.0, 150.0, 90.0],
            "mdl.tolerance_met": [True, True, True, False],
            "absorption.mean_absorption_score": [0.1, 0.2, 0.1, 0.3],
            "absorption.first_letter_mean_absorption_rate": [0.0, 0.1, 0.0, 0.2],
            "meta_sae.fve_above_null": [0.1, 0.2, 0.15, 0.25],
            "meta_sae.null_fve_std": [0.01] * 4,
            "llc.llc": [5.0, 8.0, 6.0, 9.0],
            "llc.llc_se": [0.1] * 4,
        }
    )
    assert table.loc[mdl_optimal(table), "sae_id"] == "b"  # d is smaller but missed it
    table["mdl_optimal"] = table.index == mdl_optimal(table)
    plots = comparison_plots(table)
    assert set(plots) == {
        "comparison_mdl",
        "comparison_absorption",
        "comparison_meta_sae",
        "comparison_llc",
    }
    absorption_axes = plots["comparison_absorption"].axes
    assert len(absorption_axes) == 2  # both diagnostics
    for fig in plots.values():
        plt.close(fig)
    assert mdl_optimal(table.assign(**{"mdl.tolerance_met": False})) is None
