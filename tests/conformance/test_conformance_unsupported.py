"""Architectures that do not reconstruct their input are refused, clearly."""

from __future__ import annotations

import pytest
import torch
from conformance_saes import Case, build_sae, refused_architectures
from conftest import TINY_HOOK, run_tiny
from sae_lens_ext_absorption.config import AbsorptionConfig
from sae_lens_ext_absorption.discrepancy import DiscrepancyAccumulator
from sae_lens_ext_llc.analysis import LLCAnalysis, LLCConfig
from sae_lens_ext_llc.sae import estimate_sae_llc
from sae_lens_ext_mdl.description_length import MDLAccumulator, MDLConfig

from sae_lens_ext import UnsupportedSAEError
from sae_lens_ext.analysis import RunContext
from sae_lens_ext.base_analysis import BaseAnalysis, BaseConfig
from sae_lens_ext.errors import RunError

REFUSED = refused_architectures()


def builders(sae, out_dir):
    context = RunContext(sae=sae, release="conformance", sae_id="case", out_dir=out_dir)
    return {
        "base": lambda: BaseAnalysis(BaseConfig(), context),
        "mdl": lambda: MDLAccumulator(sae, MDLConfig()),
        "absorption": lambda: DiscrepancyAccumulator(sae, AbsorptionConfig()),
        "llc": lambda: LLCAnalysis(LLCConfig(), context),
    }


def test_the_refused_are_transcoders_and_temporal():
    assert REFUSED, "SAE-Lens registers transcoders and temporal SAEs"
    assert all("transcoder" in a or a == "temporal" for a in REFUSED)


@pytest.mark.parametrize("architecture", REFUSED)
def test_analyses_refuse_with_the_reason_and_the_fix(architecture, tmp_path):
    sae = build_sae(Case(architecture))
    for name, build in builders(sae, tmp_path).items():
        with pytest.raises(UnsupportedSAEError) as raised:
            build()
        message = str(raised.value)
        assert f"does not support SAE-Lens architecture '{architecture}'" in message
        assert f"-p no:{name}" in message
        reason = "does not reconstruct" if architecture != "temporal" else "predicted"
        assert reason in message
    with pytest.raises(UnsupportedSAEError, match="llc does not support"):
        estimate_sae_llc(sae, torch.zeros(4, sae.cfg.d_in))


def test_a_run_names_each_refusing_analysis_with_its_fix(
    tiny_model, tiny_tokens, tmp_path
):
    """Through the runner: the run fails (non-zero exit on the CLI) and
    every refusing analysis is named with its reason and its fix."""
    sae = build_sae(Case("transcoder"), d_in=tiny_model.cfg.d_model)
    sae.cfg.metadata.hook_name = TINY_HOOK
    with pytest.raises(RunError) as raised:
        run_tiny(tiny_model, tiny_tokens, tmp_path / "run", sae=sae, plugins="base,mdl")
    message = str(raised.value)
    for name in ("base", "mdl"):
        assert f"{name} does not support SAE-Lens architecture 'transcoder'" in message
        assert f"-p no:{name}" in message
