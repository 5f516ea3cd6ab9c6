"""SAEs on attention heads, through a real TransformerLens model: a hook_z
SAE (SAE-Lens reshapes [n_heads, d_head]) and a hook_head_index SAE (trained
on one head's slice, as SAE-Lens's activation store gives it)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from conformance_saes import Case, build_sae
from sae_lens_ext_mdl.analysis import MDLAnalysis
from sae_lens_ext_mdl.description_length import MDLConfig

from sae_lens_ext.analysis import RunContext
from sae_lens_ext.base_analysis import BaseAnalysis, BaseConfig
from sae_lens_ext.shared_pass import model_activations, run_shared_pass

HOOK_Z = "blocks.0.attn.hook_z"
N_HEADS, D_HEAD = 2, 8  # the tiny model's
HEAD = 1


def attention_sae(kind: str):
    """A TopK SAE with rescaling and non-unit decoder norms on the hook."""
    if kind == "hook_z":
        return build_sae(Case("topk", rescale=True, hook_z=True), d_in=N_HEADS * D_HEAD)
    sae = build_sae(Case("topk", rescale=True), d_in=D_HEAD)
    sae.cfg.metadata.hook_name = HOOK_Z
    sae.cfg.metadata.hook_head_index = HEAD
    return sae


def run_base(sae, model, tokens, out_dir):
    context = RunContext(
        sae=sae,
        release="conformance",
        sae_id="attention",
        out_dir=out_dir,
        model=model,
        hook_name=HOOK_Z,
    )
    base = BaseAnalysis(BaseConfig(ce_batches=1), context)
    mdl = MDLAnalysis(MDLConfig(loss="ce", ce_batches=1, n_precisions=2), context)
    batches = model_activations(model, HOOK_Z, [tokens], skip_bos=True)
    run_shared_pass(sae, [base, mdl], batches, hook_name=HOOK_Z)
    with mock.patch("sae_lens_ext.base_analysis.density_plot"):
        return base.finish().metrics, mdl.accumulator.result()


@pytest.mark.parametrize("kind", ["hook_z", "hook_head_index"])
def test_attention_sae_metrics_match_sae_lens(kind, tiny_model, tiny_tokens, tmp_path):
    tokens = tiny_tokens[:8]
    sae = attention_sae(kind)
    metrics, mdl = run_base(sae, tiny_model, tokens, tmp_path)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=HOOK_Z)
        z = cache[HOOK_Z][:, 1:]  # [b, pos, heads, d_head], BOS excluded
        # what the SAE was trained on, as SAE-Lens gives it
        sae_in = z if kind == "hook_z" else z[:, :, HEAD]
        out = sae(sae_in)
        error = (out - sae_in).double().pow(2).mean()
        codes = sae.encode(sae_in)

        def spliced_loss(first: int) -> float:
            """The model's loss with the SAE's output in place from position
            ``first`` on (1: BOS left alone, as the base and MDL splices do)."""

            def splice(acts, hook):
                acts = acts.clone()
                if kind == "hook_z":
                    acts[:, first:] = sae(acts[:, first:])
                else:
                    acts[:, first:, HEAD] = sae(acts[:, first:, HEAD])
                return acts

            return tiny_model.run_with_hooks(
                tokens, return_type="loss", fwd_hooks=[(HOOK_Z, splice)]
            ).item()

        spliced_after_bos = spliced_loss(1)
    assert sae.cfg.d_in == (N_HEADS * D_HEAD if kind == "hook_z" else D_HEAD)
    # float32 throughout: sums of ~1,400 x 16 terms
    assert metrics["mse"] == pytest.approx(float(error), rel=1e-5)
    assert metrics["l0"] == pytest.approx(float((codes != 0).sum(-1).double().mean()))
    assert metrics["ce_loss_spliced"] == pytest.approx(spliced_after_bos, rel=1e-6)
    # MDL's CE splice of the unquantised code, at the same positions
    assert mdl.unquantised_loss == pytest.approx(spliced_after_bos, rel=1e-6)
    if kind == "hook_z":  # left as it was: it still takes [..., heads, d_head]
        assert sae(z).shape == z.shape
