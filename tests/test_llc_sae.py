"""LLC of SAE-Lens SAEs: the loss, the analysis on batches and in a run."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import make_sae
from sae_lens_ext_llc import LLCAnalysis, LLCConfig, estimate_sae_llc, sae_loss_fn

from sae_lens_ext import ActivationBatch, RunContext, run

SMALL = dict(num_chains=2, num_draws=30, num_burnin=10, step_size=1e-4)


def activations(n=128, d_in=16, seed=0):
    """Gaussian stand-ins for an SAE's input activations."""
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed))


def test_sae_loss_is_normalised_mse_plus_decoder_weighted_l1():
    sae = make_sae()
    x = activations()
    scale = float(x.pow(2).sum(-1).mean())
    with torch.no_grad():
        feats = sae.encode(x)
        mse = (sae.decode(feats) - x).pow(2).sum(-1).mean() / scale
        l1 = (feats.abs() * sae.W_dec.norm(dim=-1)).sum(-1).mean()
        plain = sae_loss_fn(scale)(sae, x)
        sparse = sae_loss_fn(scale, sparsity_coefficient=0.3)(sae, x)
    assert plain.item() == pytest.approx(mse.item(), rel=1e-6)
    assert sparse.item() == pytest.approx((mse + 0.3 * l1).item(), rel=1e-6)
    assert sae_loss_fn(scale)(sae, torch.zeros_like(x)).item() >= 0


def test_estimate_sae_llc_samples_all_weights_and_leaves_the_sae_alone():
    sae = make_sae()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    result = estimate_sae_llc(sae, activations(), progress=False, **SMALL)
    assert result.n_params == 2 * 16 * 48 + 48 + 16
    assert math.isfinite(result.llc) and math.isfinite(result.llc_se)
    assert len(result.trace) == 2 * 40
    for key, value in sae.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("acts", "fix"),
    [
        (torch.randn(10, 8), "d_in"),
        (torch.randn(16), "2-D"),
        (torch.zeros(5, 16), "> 0"),
    ],
)
def test_estimate_sae_llc_rejects_bad_activations(acts, fix):
    with pytest.raises(ValueError, match=None) as raised:
        estimate_sae_llc(make_sae(), acts, progress=False, **SMALL)
    assert fix in str(raised.value)


def batch_of(sae_in: torch.Tensor, offset: int) -> ActivationBatch:
    """An ActivationBatch around ``sae_in`` (other fields are placeholders)."""
    n = len(sae_in)
    return ActivationBatch(
        sae_in=sae_in,
        feature_acts=torch.zeros(n, 48),
        sae_out=torch.zeros_like(sae_in),
        tokens=torch.zeros(n, dtype=torch.long),
        token_context=torch.zeros(1, n, dtype=torch.long),
        positions=torch.zeros(n, 2, dtype=torch.long),
        offset=offset,
    )


def test_analysis_keeps_first_tokens_and_reports(tmp_path):
    sae = make_sae()
    context = RunContext(sae=sae, release="r", sae_id="s", out_dir=tmp_path)
    config = LLCConfig(max_tokens=100, **SMALL)
    analysis = LLCAnalysis(config, context)
    x = activations(n=160)
    for offset in range(0, 160, 64):
        analysis.update(batch_of(x[offset : offset + 64], offset))
    assert analysis.n_kept == 100
    torch.testing.assert_close(torch.cat(analysis.rows), x[:100])
    result = analysis.finish()
    assert result.metrics["n_samples"] == 100
    assert result.metrics["llc"] == pytest.approx(result.tables["chains"]["llc"].mean())
    assert set(result.tables) == {"trace", "chains"}
    assert isinstance(result.tables["trace"], pd.DataFrame)
    assert "trace" in result.plots
    assert "±" in result.card and "llc/trace.png" in result.card


def test_analysis_rejects_empty_sample(tmp_path):
    context = RunContext(sae=make_sae(), release="r", sae_id="s", out_dir=tmp_path)
    with pytest.raises(ValueError, match="max_tokens"):
        LLCAnalysis(LLCConfig(max_tokens=0), context)
    with pytest.raises(ValueError, match="n_tokens"):
        LLCAnalysis(LLCConfig(), context).finish()


def test_llc_analysis_in_a_run(tiny_model, tiny_tokens, tmp_path):
    output = run(
        sae=make_sae(),
        model=tiny_model,
        dataset=tiny_tokens,
        plugins=["llc"],
        config={"llc": {"max_tokens": 64, **SMALL}},
        out_dir=tmp_path / "run",
        n_tokens=300,
    )
    metrics = output.summary["analyses"]["llc"]["metrics"]
    assert math.isfinite(metrics["llc"]) and metrics["n_samples"] == 64
    folder = output.run_dir / "llc"
    assert (folder / "trace.png").exists()
    trace = pd.read_parquet(folder / "trace.parquet")
    assert len(trace) == 2 * 40
    assert "Local learning coefficient" in (output.run_dir / "README.md").read_text()


def test_estimate_sae_llc_and_the_analysis_share_defaults_and_calibrate(tmp_path):
    from dataclasses import fields

    from sae_lens_ext_llc.sae import SAE_LLC_DEFAULTS

    defaults = {f.name: f.default for f in fields(LLCConfig)}
    for key in ("num_chains", "num_draws", "num_burnin", "nbeta", "localization"):
        assert defaults[key] == SAE_LLC_DEFAULTS[key]
    assert defaults["step_size"] is None and defaults["calibrate"]

    sae, x = make_sae(), activations(n=64)
    options = dict(num_chains=2, num_draws=60, num_burnin=20)
    direct = estimate_sae_llc(sae, x, progress=False, **options)
    sweep = direct.calibration
    assert sweep is not None and set(sweep.table["step_size"]) >= {3e-5, 1e-4, 3e-4}
    chosen = sweep.recommended
    expected_step = (
        SAE_LLC_DEFAULTS["step_size"] if chosen is None else chosen["step_size"]
    )
    assert direct.settings["step_size"] == expected_step
    assert direct.diagnostics.curvature is sweep.curvature  # computed once

    context = RunContext(sae=sae, release="r", sae_id="s", out_dir=tmp_path)
    analysis = LLCAnalysis(LLCConfig(max_tokens=64, **options), context)
    analysis.update(batch_of(x, 0))
    result = analysis.finish()
    assert result.metrics["llc"] == pytest.approx(direct.llc, rel=1e-6)
    assert result.metrics["step_size"] == expected_step
    assert "calibration" in result.tables and "calibration" in result.plots
    assert "calibrate_llc" in result.card

    fixed = estimate_sae_llc(sae, x, progress=False, step_size=1e-4, **options)
    assert fixed.calibration is None and fixed.settings["step_size"] == 1e-4
