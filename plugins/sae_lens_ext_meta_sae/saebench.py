"""The meta-SAE analysis as SAEBench's ``meta_structure_decoder_variance`` eval.

SAEBench trains a BatchTopK meta-SAE on every raw decoder row and reports
the fraction of the decoder's variance it explains.  Ours trains on the
unit-normalised rows, by default of the latents that fired only.  The two
numbers are the same quantity only when every row was used and the rows
already have unit norm (most SAE-Lens SAEs); otherwise no JSON is written
and ``summary.json`` says why.  Higher explained variance means more shared
structure between decoder directions (less atomic latents), so lower is
better in the sense of the Matryoshka paper's composition experiment.
"""

from __future__ import annotations

from sae_lens_ext import SAEBenchEval, SAEBenchSkip, check_finite

EVAL_TYPE_ID = "meta_structure_decoder_variance"
#: Largest |norm - 1| of a decoder row for which unit rows equal raw rows.
UNIT_NORM_TOLERANCE = 1e-3

DIRECTIONS = {
    "fraction_variance_explained": "lower",
    "fvu": "higher",
    "mean_active_meta_latents": "none",
    "dead_meta_latents": "none",
    "mean_reconstruction_cosine": "lower",
    "median_reconstruction_cosine": "lower",
    "base_latents_without_meta_latent": "none",
    "d_meta": "none",
    "d_sae": "none",
    "base_latents_used": "none",
    "dead_base_latents_left_out": "none",
    "k": "none",
    "training_steps": "none",
    "training_seconds": "lower",
    "resampled_latents": "none",
    "null_fve": "none",
    "null_fve_std": "none",
    "null_seeds": "none",
    "fve_above_null": "none",
    "null_threshold": "none",
    "distinguishable_from_null": "none",
    "frequency_weighted_fve": "lower",
}

SAEBENCH_DIRECTIONS = {
    "meta_structure.decoder_fraction_variance_explained": "lower",
    "meta_structure.train_time_seconds": "lower",
    "meta_structure.final_reconstruction_mse": "higher",
}


def batch_size(config: dict, rows: int) -> int:
    """Decoder rows per training step (capped at ``rows`` unless drawn with
    replacement, as the trainer does)."""
    size = int(config.get("batch_size", rows))
    return size if config.get("sampling") == "replacement" else min(size, rows)


def meta_structure_eval(result, run) -> SAEBenchEval:
    """The meta-SAE's decomposition as SAEBench's meta_structure eval output."""
    metrics = result.metrics
    left_out = int(metrics["d_sae"]) - int(metrics["base_latents_used"])
    if left_out:
        raise SAEBenchSkip(
            f"{left_out} dead latents were left out of the meta-SAE's training, "
            "while SAEBench decomposes every decoder row; rerun with "
            "--meta_sae.skip_dead false (the saebench preset does)"
        )
    norms = run.sae.W_dec.detach().float().norm(dim=1)
    if float((norms - 1).abs().max()) > UNIT_NORM_TOLERANCE:
        raise SAEBenchSkip(
            f"the decoder rows have norms {float(norms.min()):.3g} to "
            f"{float(norms.max()):.3g}; sae-lens-ext's meta-SAE reads unit-"
            "normalised rows and SAEBench's the raw rows, so their variance "
            "explained differ (see the meta_sae metrics in summary.json instead)"
        )
    latents = result.tables["base_latents"]
    d_in = int(run.sae.cfg.d_in)
    saebench_metrics = {
        "meta_structure": {
            "decoder_fraction_variance_explained": float(
                metrics["fraction_variance_explained"]
            ),
            "train_time_seconds": float(metrics["training_seconds"]),
            "final_reconstruction_mse": float(
                latents["squared_error"].sum() / (len(latents) * d_in)
            ),
        }
    }
    check_finite(saebench_metrics)
    config = run.config
    k = float(config.get("k", metrics["k"]))
    rows = int(metrics["base_latents_used"])
    eval_config = {
        "random_seed": int(run.seed if config.get("seed") is None else config["seed"]),
        "width_ratio": float(
            config.get("width_ratio") or metrics["d_meta"] / metrics["d_sae"]
        ),
        "train_steps": int(config.get("steps", metrics["training_steps"])),
        "train_batch_size": batch_size(config, rows),
        "learning_rate": float(config.get("lr", 0.0)),
        "weight_decay": 0.0,
        "autocast": bool(config.get("autocast", False)),
        "dtype": "float32",
    }
    if k.is_integer():
        eval_config["k"] = int(k)
    extra = {
        key: value
        for key, value in metrics.items()
        if key not in ("fraction_variance_explained", "training_seconds")
    }
    trainer_settings = ", ".join(
        f"{name} {config.get(name)}"
        for name in (
            "sampling",
            "decoder_norm",
            "decoder_init_norm",
            "b_dec_init",
            "grad_clip",
            "lr_decay_fraction",
            "resample_every",
        )
    )
    notes = [
        "Meta-SAE trained by sae-lens-ext's sparse BatchTopK trainer (Adam; "
        f"{trainer_settings}) on unit-normalised decoder rows, saved as a "
        "JumpReLU SAE whose threshold reproduces BatchTopK over all rows; "
        "SAEBench trains SAE-Lens's BatchTopKTrainingSAE (the saebench preset's "
        "settings give the same gradients) and evaluates BatchTopK per batch "
        "of 4096 rows.",
        "Higher decoder_fraction_variance_explained means more shared structure "
        "between decoder directions, i.e. less atomic latents.",
    ]
    if "k" not in eval_config:
        notes.append(f"k = {k:g} is not an integer, so eval_config.k is left out.")
    return SAEBenchEval(
        eval_type_id=EVAL_TYPE_ID,
        eval_config=eval_config,
        metrics=saebench_metrics,
        details=[],
        directions=SAEBENCH_DIRECTIONS,
        extra_metrics=extra,
        extra_directions={key: DIRECTIONS.get(key, "none") for key in extra},
        notes=notes,
    )
