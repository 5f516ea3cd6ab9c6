"""The MDL analysis beside SAEBench's ``mdl`` eval output.

SAEBench's MDL eval has no typed schema: it writes a plain dict
(``eval_instance_id``, ``sae_lens_release``, ``sae_lens_id``,
``eval_type_id``, ``sae_lens_version``, ``sae_bench_version``,
``date_time``, ``eval_config``, ``eval_results``, ``eval_artifacts``,
``sae_cfg_dict``), one ``eval_results`` entry per bin count with its
``description_length``, ``within_threshold`` and ``mse_loss``.  Its
description length is a different quantity from ours: per latent, bins
spanning ``[0, max(100, max activation)]``, the entropy of the histogram of
*all* tokens (zeros in the first bin) weighted by the firing rate plus the
firing entropy, and an MSE with every latent, silent ones included,
quantised to a bin midpoint.  None of those numbers can be derived from our
streamed histograms, so ``eval_results`` stays empty and our description
length goes in the separate ``sae_lens_ext`` block.
"""

from __future__ import annotations

from sae_lens_ext import SAEBenchEval

EVAL_TYPE_ID = "mdl"

DIRECTIONS = {
    "bits_per_token": "lower",
    "precision": "none",
    "mse_at_precision": "lower",
    "mse_unquantised": "lower",
    "ce_at_precision": "lower",
    "ce_unquantised": "lower",
    "tolerance_met": "none",
    "l0": "none",
    "naive_bound_bits": "none",
    "dead_latents": "lower",
    "mse_increase": "none",
    "mse_increase_se": "lower",
    "precision_low": "none",
    "precision_high": "none",
    "precision_stability": "higher",
    "loss_batches": "none",
    "activation_scale": "none",
    "pilot_precision": "none",
    "ladder_finest": "none",
    "ladder_coarsest": "none",
    "at_ladder_end": "lower",
}


def mdl_eval(result, run) -> SAEBenchEval:
    """Our description length in SAEBench's MDL layout, its results left empty."""
    context = getattr(run.sae.cfg.metadata, "context_size", None)
    precisions = result.tables["precisions"]
    extra = dict(result.metrics)
    extra["precisions"] = precisions.to_dict(orient="records")
    return SAEBenchEval(
        eval_type_id=EVAL_TYPE_ID,
        eval_config={
            "model_name": run.model_name,
            "random_seed": run.seed,
            "dataset_name": str(run.summary.get("dataset")),
            **({"context_length": int(context)} if context else {}),
        },
        legacy=True,
        legacy_results=[],
        extra_metrics=extra,
        extra_directions={
            key: DIRECTIONS.get(key, "none") for key in extra if key != "precisions"
        },
        notes=[
            "eval_results is empty: SAEBench's description_length (per-latent "
            "bins over [0, max(100, max activation)], entropy of the all-token "
            "histogram weighted by the firing rate, plus the firing entropy), "
            "within_threshold and mse_loss (every latent, silent ones "
            "included, quantised to a bin midpoint) are different quantities "
            "from ours and are not computed.",
            "sae_lens_ext.metrics.bits_per_token: the sum over latents of the "
            "entropy of each latent's quantised activation (zero its own "
            "symbol) at the coarsest bin width whose MSE stays within the "
            "tolerance (Ayonrinde, Pearce, Sharkey 2024); precisions lists "
            "every bin width tried.",
        ],
    )
