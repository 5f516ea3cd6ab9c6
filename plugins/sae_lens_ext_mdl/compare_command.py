"""``mdl-compare``: load a release's SAEs and compare them in one model pass."""

from __future__ import annotations

from pathlib import Path

from sae_lens_ext import AnalysisResult, load_model_for_sae, load_sae
from sae_lens_ext.artifacts import write_result
from sae_lens_ext.runner import resolve_tokens
from sae_lens_ext.shared_pass import check_activations, model_activations
from sae_lens_ext.tokens import iter_token_batches

from .analysis import (
    comparison_plot,
    comparison_table,
    curves_table,
    describe_saes,
    rate_distortion_plot,
)


def run_comparison(release, sae_ids, n_tokens, tolerance, loss_bound, dataset, out):
    """Compare SAEs on shared activations; write the table and plot to ``out``."""
    saes = {sae_id: load_sae(release, sae_id) for sae_id in sae_ids}
    first = next(iter(saes.values()))
    metadata = first.cfg.metadata
    hooks = {sae.cfg.metadata.hook_name for sae in saes.values()}
    if len(hooks) != 1:
        raise ValueError(
            f"the SAEs read different hooks {sorted(hooks)}; compare SAEs of one hook"
        )
    model = load_model_for_sae(first, release)
    tokens = resolve_tokens(dataset, release, model, metadata, n_tokens)
    hook = metadata.hook_name

    def batches():
        for acts in model_activations(
            model, hook, iter_token_batches(tokens, 32, n_tokens), skip_bos=True
        ):
            check_activations(acts.sae_in, first.cfg.d_in, hook)
            yield acts.sae_in

    results = describe_saes(saes, batches(), tolerance=tolerance)
    table = comparison_table(results, saes, loss_bound)
    out = Path(out)
    write_result(
        AnalysisResult(
            tables={"comparison": table, "curves": curves_table(results)},
            plots={
                "comparison": comparison_plot(table, loss_bound),
                "rate_distortion": rate_distortion_plot(results),
            },
        ),
        out,
        out,
    )
    return table
