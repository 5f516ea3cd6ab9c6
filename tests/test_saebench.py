"""SAEBench-format outputs: schema conformance, SAEBench's formulas, presets, directions.

The expected structures (field names and JSON types) are in
``tests/data/saebench/<eval_type>.json``, written from SAEBench's published
schemas.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_sae

from sae_lens_ext import AnalysisResult, SAEBenchRun, SAEBenchSkip, run
from sae_lens_ext.core_statistics import CoreStatistics
from sae_lens_ext.downstream import downstream_metrics
from sae_lens_ext.presets import (
    matching_preset,
    preset_config,
    preset_overrides,
)
from sae_lens_ext.saebench import DIRECTIONS, UNSPECIFIED
from sae_lens_ext.saebench_core import max_other_cosine

SCHEMAS = Path(__file__).parent / "data" / "saebench"
JSON_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


def has_type(value, expected) -> bool:
    """Whether a JSON value has one of the schema's types (bools are not numbers)."""
    for name in [expected] if isinstance(expected, str) else expected:
        if name == "any":
            return True
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if isinstance(value, JSON_TYPES[name]):
            return True
    return False


def schema_errors(document: dict, eval_type: str) -> list[str]:
    """Every way ``document`` departs from SAEBench's field names and types."""
    spec = json.loads((SCHEMAS / f"{eval_type}.json").read_text())
    errors = []

    def check(where, values: dict, types: dict, required, closed=True):
        for key in required:
            if key not in values:
                errors.append(f"{where}: missing {key}")
        for key, value in values.items():
            if key not in types:
                if closed:
                    errors.append(f"{where}: unknown field {key}")
            elif not has_type(value, types[key]):
                errors.append(f"{where}.{key}: {value!r} is not {types[key]}")

    check("top", document, spec["top_level"], spec["required"], closed=False)
    if document.get("eval_type_id") != spec["eval_type_id"]:
        errors.append(f"eval_type_id {document.get('eval_type_id')!r}")
    check(
        "eval_config",
        document.get("eval_config", {}),
        spec["eval_config"],
        spec["eval_config_required"],
    )
    if "metric_categories" in spec:
        metrics = document.get("eval_result_metrics", {})
        check(
            "metrics",
            metrics,
            {c: "object" for c in spec["metric_categories"]},
            spec["metric_categories_required"],
        )
        for category, sub in spec["metric_categories"].items():
            if category in metrics:
                check(category, metrics[category], sub["types"], sub["required"])
        for i, detail in enumerate(document.get("eval_result_details") or []):
            check(f"details[{i}]", detail, spec["detail"], spec["detail_required"])
    else:
        for i, result in enumerate(document.get("eval_results", [])):
            check(f"results[{i}]", result, spec["result"], spec["result_required"])
    return errors


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo SAE at SAEBench's settings (fewer meta-SAE steps, for speed)."""
    plugins = "meta_sae,mdl,absorption"
    config = preset_config("saebench", {"meta_sae": {"steps": 200}}, plugins)
    return run(
        plugins=plugins,
        config=config,
        n_tokens=16_384,
        out_dir=tmp_path_factory.mktemp("saebench") / "run",
    )


def load_output(run_output, eval_type: str) -> dict:
    return json.loads(
        (run_output.run_dir / "saebench" / f"{eval_type}.json").read_text()
    )


@pytest.mark.parametrize(
    "eval_type", ["core", "meta_structure_decoder_variance", "mdl"]
)
def test_demo_outputs_follow_saebenchs_schema(demo_run, eval_type):
    document = load_output(demo_run, eval_type)
    assert schema_errors(document, eval_type) == []
    entry = demo_run.summary["saebench"]
    assert any(
        item.get("file") == f"saebench/{eval_type}.json" for item in entry.values()
    )


def test_schema_check_catches_wrong_names_and_types(demo_run):
    document = load_output(demo_run, "core")
    document["eval_result_metrics"]["sparsity"]["l0"] = None
    document["eval_result_metrics"]["sparsity"]["l_zero"] = 3.0
    del document["eval_result_metrics"]["shrinkage"]["l2_ratio"]
    document["datetime_epoch_millis"] = 1.5
    errors = schema_errors(document, "core")
    assert "sparsity.l0: None is not number" in errors
    assert "sparsity: unknown field l_zero" in errors
    assert "shrinkage: missing l2_ratio" in errors
    assert "top.datetime_epoch_millis: 1.5 is not integer" in errors


def test_our_metrics_stay_in_the_separate_block(demo_run):
    core = load_output(demo_run, "core")
    block = core["eval_result_unstructured"]["sae_lens_ext"]
    base = demo_run.summary["analyses"]["base"]["metrics"]
    assert block["metrics"]["explained_variance_centred"] == pytest.approx(
        base["explained_variance"]
    )
    assert block["metrics"]["mse_per_element"] == pytest.approx(base["mse"])
    # SAEBench's metric names hold SAEBench's formulas, not ours
    reconstruction = core["eval_result_metrics"]["reconstruction_quality"]
    assert reconstruction["mse"] != pytest.approx(base["mse"])
    assert set(block["metric_directions"]) == {
        f"{c}.{k}" for c, v in core["eval_result_metrics"].items() for k in v
    }
    assert "not run by SAEBench" in core["sae_bench_commit_hash"]
    mdl = load_output(demo_run, "mdl")
    assert mdl["eval_results"] == []  # SAEBench's description length is not ours
    assert mdl["sae_lens_ext"]["metrics"]["bits_per_token"] == pytest.approx(
        demo_run.summary["analyses"]["mdl"]["metrics"]["bits_per_token"]
    )


def test_core_numbers_equal_summary_and_weights(demo_run):
    core = load_output(demo_run, "core")
    metrics = core["eval_result_metrics"]
    base = demo_run.summary["analyses"]["base"]["metrics"]
    assert metrics["sparsity"]["l0"] == pytest.approx(base["l0"])
    assert metrics["model_performance_preservation"]["ce_loss_score"] == (
        pytest.approx(base["ce_loss_recovered"])
    )
    assert metrics["misc_metrics"]["frac_alive"] == pytest.approx(
        1 - base["dead_fraction"]
    )
    assert len(core["eval_result_details"]) == base["d_sae"]
    import sae_lens_ext

    sae = sae_lens_ext.load_sae("sae-lens-ext/demo", demo_run.summary["sae_id"])
    unit = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    cos = unit @ unit.T
    cos.fill_diagonal_(-2)
    expected = cos.max(1).values.mean().item()
    assert metrics["misc_metrics"]["average_max_decoder_cosine_sim"] == (
        pytest.approx(expected, abs=1e-5)
    )


def test_meta_structure_matches_saebenchs_variance_formula(demo_run):
    from sae_lens import SAE

    document = load_output(demo_run, "meta_structure_decoder_variance")
    import sae_lens_ext

    base = sae_lens_ext.load_sae("sae-lens-ext/demo", demo_run.summary["sae_id"])
    meta = SAE.load_from_disk(demo_run.run_dir / "meta_sae" / "meta_sae")
    decoder = base.W_dec.detach().float()
    with torch.no_grad():
        recon = meta.decode(meta.encode(decoder))
    residual = (decoder - recon).pow(2).sum().item()
    total = (decoder - decoder.mean(0)).pow(2).sum().item()
    metrics = document["eval_result_metrics"]["meta_structure"]
    assert metrics["decoder_fraction_variance_explained"] == pytest.approx(
        1 - residual / total, rel=1e-4
    )
    assert metrics["final_reconstruction_mse"] == pytest.approx(
        residual / decoder.numel(), rel=1e-4
    )
    assert document["eval_config"]["width_ratio"] == 0.25
    assert meta.cfg.d_sae == math.ceil(0.25 * base.cfg.d_sae)


def test_demo_absorption_is_written_in_saebench_format_and_warned(demo_run):
    """Demo release v2 spells: at least SAEBench's 20 letters have a good
    probe (version 1 had none, and the file was skipped with the reason)."""
    metrics = demo_run.summary["analyses"]["absorption"]["metrics"]
    assert metrics["first_letter_letters_evaluated"] >= 20
    record = demo_run.summary["saebench"]["absorption"]
    assert record["written"] is True
    document = load_output(demo_run, "absorption_first_letter")
    assert schema_errors(document, "absorption_first_letter") == []
    warnings = demo_run.summary["analyses"]["absorption"]["warnings"]
    assert any("1,024 latents" in w for w in warnings)
    assert any("parameters" in w for w in warnings)
    # the lr 1e-2 rebuild left 1.5% dead and 0.96 variance explained: not undertrained
    assert not any("undertraining" in w for w in warnings)
    card = (demo_run.run_dir / "README.md").read_text()
    assert "tens of thousands of latents" in card


def test_every_demo_metric_has_a_direction(demo_run):
    for name, entry in demo_run.summary["analyses"].items():
        directions = entry["directions"]
        scalars = [
            k
            for k, v in entry["metrics"].items()
            if isinstance(v, int | float | bool) or v is None
        ]
        assert set(directions) == set(scalars), name
        assert UNSPECIFIED not in directions.values(), (name, directions)
    card = (demo_run.run_dir / "README.md").read_text()
    assert "| analysis | metric | value | better |" in card
    assert f"| {DIRECTIONS['higher']} |" in card


def test_run_records_the_preset_only_when_its_settings_hold(demo_run):
    assert demo_run.summary["preset"] is None  # steps were overridden
    config = {k: dict(v) for k, v in demo_run.summary["config"].items()}
    config["meta_sae"]["steps"] = 1500
    assert matching_preset(config) == "saebench"
    config["absorption"]["subtract_b_dec"] = True
    assert matching_preset(config) is None


def test_preset_merges_under_explicit_options():
    merged = preset_config("saebench", {"meta_sae": {"k": 8.0}}, "meta_sae")
    assert merged["meta_sae"]["k"] == 8.0
    assert merged["meta_sae"]["width_ratio"] == 0.25
    assert "absorption" not in merged  # not enabled
    assert preset_config(None, {"mdl": {"tolerance": 0.1}}) == {
        "mdl": {"tolerance": 0.1}
    }
    with pytest.raises(ValueError, match="--preset"):
        preset_overrides("sae-bench")


def test_meta_width_ratio_follows_saebench():
    from sae_lens_ext_meta_sae.config import MetaSAEConfig

    assert MetaSAEConfig(width_ratio=0.25).meta_width(1023) == 256
    assert MetaSAEConfig(width_ratio=0.001, k=4).meta_width(1000) == 4
    with pytest.raises(ValueError, match="not both"):
        MetaSAEConfig(width_ratio=0.25, d_meta=10).validate(100)


def sae_unlike_ours():
    """A ReLU SAE with a rescaled, non-unit decoder and a decoder bias."""
    sae = make_sae(d_in=16, d_sae=40, seed=3)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.3, 2.0, 40)[:, None])
        sae.b_dec.normal_(0, 0.5)
    return sae


def batches_of(sae, x: torch.Tensor, sizes: list[int]):
    """Host-shaped batches of ``x``, ``positions`` naming 4 prompts per batch."""
    start = 0
    for size in sizes:
        rows = x[start : start + size]
        with torch.no_grad():
            acts = sae.encode(rows)
            out = sae.decode(acts)
        prompts = torch.arange(size) % 4
        yield SimpleNamespace(
            sae_in=rows,
            feature_acts=acts,
            sae_out=out,
            positions=torch.stack([prompts, torch.arange(size)], 1),
        )
        start += size


def test_core_statistics_equal_saebenchs_formulas_computed_densely():
    sae = sae_unlike_ours()
    torch.manual_seed(0)
    x = torch.randn(300, 16) * 2 + 1.5
    sizes = [128, 128, 44]
    stats = CoreStatistics(40)
    for batch in batches_of(sae, x, sizes):
        stats.update(batch)
    metrics, terms = stats.metrics(), stats.saebench_terms()
    batches = list(batches_of(sae, x, sizes))
    xs = torch.cat([b.sae_in for b in batches]).double()
    ys = torch.cat([b.sae_out for b in batches]).double()
    acts = torch.cat([b.feature_acts for b in batches]).double()
    cos = torch.nn.functional.cosine_similarity(xs, ys, dim=1)
    assert metrics["cossim"] == pytest.approx(cos.mean().item())
    assert metrics["l1"] == pytest.approx(acts.sum(1).mean().item())
    assert metrics["l2_ratio"] == pytest.approx(
        (ys.norm(dim=1) / xs.norm(dim=1)).mean().item()
    )
    bias = [
        (
            b.sae_out.double().norm(dim=1).pow(2).mean()
            / (b.sae_in * b.sae_out).sum(1).mean()
        ).item()
        for b in batches
    ]
    assert metrics["relative_reconstruction_bias"] == pytest.approx(sum(bias) / 3)
    # SAEBench's explained variance: batch means of |x|^2, x_ij^2 and |x - y|^2
    s = sum(b.sae_in.double().pow(2).sum(1).mean() for b in batches) / 3
    m = sum(b.sae_in.double().pow(2).mean() for b in batches) / 3
    r = sum((b.sae_in - b.sae_out).double().pow(2).sum(1).mean() for b in batches) / 3
    assert terms["explained_variance"] == pytest.approx((1 - r / (s - m**2)).item())
    per_token = torch.cat(
        [(b.sae_in - b.sae_out).double().pow(2).sum(1) / len(b.sae_in) for b in batches]
    )
    assert terms["mse"] == pytest.approx(per_token.mean().item())
    legacy = torch.cat(
        [
            1
            - (b.sae_in - b.sae_out).double().pow(2).sum(1)
            / (b.sae_in - b.sae_in.mean(0)).double().pow(2).sum(1)
            for b in batches
        ]
    )
    assert terms["explained_variance_legacy"] == pytest.approx(legacy.mean().item())
    # firing tokens per prompt fired in, -1 for latents that never fire
    fired = acts > 0
    prompts = sum(
        torch.stack(
            [(b.feature_acts[b.positions[:, 0] == p] > 0).any(0) for p in range(4)]
        )
        .sum(0)
        .double()
        for b in batches
    )
    expected = torch.where(prompts > 0, fired.sum(0) / prompts.clamp_min(1), -1.0)
    assert torch.allclose(
        torch.tensor(terms["consistent_activation_heuristic"]).double(), expected
    )


def test_downstream_kl_equals_torch_kl(tiny_model, tiny_tokens):
    sae = sae_unlike_ours()
    hook = "blocks.0.hook_resid_post"
    tokens = tiny_tokens[:20]
    result = downstream_metrics(tiny_model, sae, hook, tokens)
    with torch.no_grad():
        clean = tiny_model(tokens).log_softmax(-1)
        spliced = tiny_model.run_with_hooks(
            tokens, fwd_hooks=[(hook, lambda a, hook: sae(a))]
        ).log_softmax(-1)
        loss = tiny_model.run_with_hooks(
            tokens, return_type="loss", fwd_hooks=[(hook, lambda a, hook: sae(a))]
        )
    kl = (
        torch.nn.functional.kl_div(
            spliced.flatten(0, 1), clean.flatten(0, 1), log_target=True, reduction="sum"
        )
        / clean.shape[0]
        / clean.shape[1]
    )
    assert result["kl_div_with_sae"] == pytest.approx(kl.item(), rel=1e-4)
    assert result["ce_loss_spliced"] == pytest.approx(loss.item(), rel=1e-5)
    assert result["ce_tokens"] == tokens.numel()


def test_max_other_cosine_equals_dense(monkeypatch):
    import sae_lens_ext.saebench_core as core

    monkeypatch.setattr(core, "COSINE_BLOCK_ENTRIES", 2500 * 7)  # blocks of 7 rows
    rows = torch.nn.functional.normalize(torch.randn(2500, 8), dim=1)
    cos = rows @ rows.T
    cos.fill_diagonal_(-2)
    assert torch.allclose(max_other_cosine(rows), cos.max(1).values, atol=1e-6)


def letters_result(n_letters: int, **planted_options):
    from sae_lens_ext_absorption.synthetic import planted_letters
    from test_absorption import letter_report

    planted = planted_letters(
        letters="abcdefghijklmnopqrstuvwxyz"[:n_letters], **planted_options
    )
    report = letter_report(planted)
    return planted, AnalysisResult(metrics=report.metrics, tables=report.tables)


def absorption_run(sae, config=None, model=None):
    return SAEBenchRun(
        release="planted",
        sae_id="letters",
        sae=sae,
        model=model,
        seed=0,
        config=config or {"min_probe_f1": 0.6, "f1_jump": 0.03, "max_k": 10},
        summary={"model_name": "planted", "sae_lens_ext_version": "test"},
    )


def test_absorption_output_follows_schema_and_planted_rates():
    from sae_lens_ext_absorption.saebench import absorption_eval

    planted, result = letters_result(21, words_per_letter=8, absorbed_per_letter=3)
    run_info = absorption_run(planted.sae)
    evaluation = absorption_eval(result, run_info)
    document = evaluation.document(run_info, "id", 1_700_000_000_000)
    assert schema_errors(document, "absorption_first_letter") == []
    letters = result.tables["letters"]
    mean = document["eval_result_metrics"]["mean"]
    assert mean["mean_full_absorption_score"] == pytest.approx(
        letters["absorption_rate"].mean()
    )
    assert mean["std_dev_full_absorption_score"] == pytest.approx(
        letters["absorption_rate"].std(ddof=1)
    )
    assert mean["mean_full_absorption_score"] > 0.1  # planted absorption shows
    rows = result.tables["letter_rows"]
    for detail in document["eval_result_details"]:
        letter_rows = rows[rows["letter"] == detail["first_letter"]]
        assert detail["num_full_absorption"] == int(
            letter_rows["full_absorption"].sum()
        )
        assert detail["num_probe_true_positives"] == len(letter_rows)
    block = document["eval_result_unstructured"]["sae_lens_ext"]
    assert (
        block["metric_directions"]["mean.mean_full_absorption_score"]
        == (DIRECTIONS["lower"])
    )
    assert any("1 - absorption" in note for note in block["notes"])


def test_absorption_needs_saebenchs_twenty_letters():
    from sae_lens_ext_absorption.saebench import absorption_eval

    planted, result = letters_result(6)
    with pytest.raises(SAEBenchSkip, match="min_feats_for_eval"):
        absorption_eval(result, absorption_run(planted.sae))


def test_absorption_warnings_flag_small_saes_and_models(tiny_model):
    from sae_lens_ext_absorption.saebench import absorption_warnings

    planted, result = letters_result(4)
    warnings = absorption_warnings(
        result, absorption_run(planted.sae, model=tiny_model)
    )
    assert any("latents" in w for w in warnings)
    assert any(
        f"{sum(p.numel() for p in tiny_model.parameters()):,}" in w for w in warnings
    )


def test_meta_structure_refuses_a_non_unit_decoder():
    from sae_lens_ext_meta_sae.saebench import meta_structure_eval

    sae = sae_unlike_ours()
    result = AnalysisResult(metrics={"d_sae": 40, "base_latents_used": 40})
    with pytest.raises(SAEBenchSkip, match="unit-normalised"):
        meta_structure_eval(result, absorption_run(sae))
    result = AnalysisResult(metrics={"d_sae": 40, "base_latents_used": 30})
    with pytest.raises(SAEBenchSkip, match="skip_dead false"):
        meta_structure_eval(result, absorption_run(sae))


def test_failing_mapping_keeps_the_run(tmp_path, fresh_registry, monkeypatch):
    import sae_lens_ext_meta_sae.saebench as mapping

    options = dict(
        plugins="meta_sae",
        config={"meta_sae": {"steps": 20, "skip_dead": False}},
        n_tokens=2048,
        out_dir=tmp_path / "run",
    )
    earlier = (
        run(**options).run_dir / "saebench" / "meta_structure_decoder_variance.json"
    )
    assert earlier.is_file()

    def broken(result, run):
        raise RuntimeError("mapping bug")

    monkeypatch.setattr(mapping, "meta_structure_eval", broken)
    output = run(**options, overwrite=True)
    assert output.summary["status"] == "complete"
    assert "mapping bug" in output.summary["saebench"]["meta_sae"]["error"]
    assert (output.run_dir / "meta_sae" / "meta_sae" / "cfg.json").is_file()
    # the earlier run's file does not pass for this run's result
    assert not (output.run_dir / "saebench" / earlier.name).exists()
    card = (output.run_dir / "README.md").read_text()
    assert "mapping failed: RuntimeError: mapping bug" in card


def cli_meta_run(out: Path, *options: str):
    """``sae-lens-ext run -p meta_sae`` (20 steps, 2048 tokens) with ``options``."""
    from click.testing import CliRunner

    from sae_lens_ext.cli import build_cli

    args = ["run", "-p", "meta_sae", "--meta_sae.steps", "20", *options]
    args += ["--n-tokens", "2048", "--out", str(out)]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    return result


def test_cli_preset_sets_saebench_options_under_explicit_ones(tmp_path):
    from click.testing import CliRunner

    from sae_lens_ext.cli import build_cli

    out = tmp_path / "run"
    cli_meta_run(out, "--preset", "saebench")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["meta_sae"]["width_ratio"] == 0.25
    assert summary["config"]["meta_sae"]["steps"] == 20
    assert "absorption" not in summary["config"]
    assert (out / "saebench" / "meta_structure_decoder_variance.json").is_file()
    bad = CliRunner().invoke(build_cli(), ["run", "--preset", "sae-bench"])
    assert bad.exit_code != 0 and "saebench" in bad.output


def test_seed_table_means_and_spreads():
    from sae_lens_ext.seeds import seed_table

    def summary(fve, l0):
        return {
            "analyses": {
                "meta_sae": {
                    "metrics": {"fraction_variance_explained": fve, "flags": "x"},
                    "directions": {"fraction_variance_explained": "lower"},
                },
                "base": {"metrics": {"l0": l0, "ok": True}, "directions": {}},
            }
        }

    table = seed_table([summary(0.5, 16.0), summary(0.7, 16.0), summary(0.6, 16.0)])
    rows = table.set_index(["analysis", "metric"])
    assert rows.loc[("meta_sae", "fraction_variance_explained"), "mean"] == (
        pytest.approx(0.6)
    )
    assert rows.loc[("meta_sae", "fraction_variance_explained"), "std"] == (
        pytest.approx(0.1)
    )
    assert rows.loc[("meta_sae", "fraction_variance_explained"), "better"] == "lower"
    assert rows.loc[("base", "l0"), "std"] == 0
    assert len(table) == 2  # strings and booleans are not averaged


def test_cli_seeds_reruns_the_stochastic_parts(tmp_path):
    out = tmp_path / "seeds"
    assert "±" in cli_meta_run(out, "--seeds", "2").output
    record = json.loads((out / "seeds.json").read_text())
    assert record["seeds"] == [0, 1]
    rows = {(r["analysis"], r["metric"]): r for r in record["metrics"]}
    assert rows[("base", "l0")]["std"] == 0  # the shared pass is not random
    assert rows[("meta_sae", "fraction_variance_explained")]["std"] > 0
    for seed in (0, 1):
        summary = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
        assert summary["seed"] == seed
