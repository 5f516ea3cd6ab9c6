"""The absorption analysis as SAEBench's ``absorption_first_letter`` eval.

SAEBench's metrics are means (and sample standard deviations) over the
letters whose ground-truth probe F1 exceeds ``min_GT_probe_f1``; it reports
nothing when fewer than ``min_feats_for_eval`` (20) letters do.  Both
absorption numbers are *lower is better*: SAEBench's JSON holds absorption,
its paper plots ``1 - absorption``.

Meaningfulness (SAEBench's maintainers): absorption says something for SAEs
of tens of thousands of latents on LLMs of about 1B+ parameters, and an
undertrained SAE scores misleadingly low; :func:`absorption_warnings` flags
runs outside that range.
"""

from __future__ import annotations

from sae_lens_ext import SAEBenchEval, SAEBenchSkip, check_finite

from .saebench_probes import ranking_schedule

EVAL_TYPE_ID = "absorption_first_letter"
#: SAEBench's min_feats_for_eval: letters with a good probe needed to report.
MIN_LETTERS = 20
#: Below these the absorption rate is not meaningful (SAEBench's maintainers).
MEANINGFUL_LATENTS = 10_000
MEANINGFUL_PARAMETERS = 1_000_000_000
#: Signs of an undertrained SAE, from the base analysis.
UNDERTRAINED_DEAD_FRACTION = 0.25
UNDERTRAINED_EXPLAINED_VARIANCE = 0.7

DIRECTIONS = {
    "n_rows": "none",
    "alive_latents": "none",
    "rare_latents": "none",
    "mean_overlap": "higher",
    "low_overlap_fraction": "lower",
    "mean_absorption_score": "lower",
    "suspected_latents": "lower",
    "first_letter_letters_evaluated": "none",
    "first_letter_letters_probed": "none",
    "first_letter_mean_probe_f1": "none",
    "first_letter_mean_absorption_rate": "lower",
    "first_letter_mean_absorption_fraction": "lower",
    "first_letter_mean_main_latents": "none",
    "first_letter_rows_seen": "none",
    "first_letter_labelled_fraction": "none",
    "first_letter_alphabetic_fraction": "none",
    "first_letter_word_start_fraction": "none",
    "first_letter_fragment_fraction": "none",
}

SAEBENCH_DIRECTIONS = {
    "mean.mean_absorption_fraction_score": "lower",
    "mean.mean_full_absorption_score": "lower",
    "mean.mean_num_split_features": "none",
    "mean.std_dev_absorption_fraction_score": "none",
    "mean.std_dev_full_absorption_score": "none",
    "mean.std_dev_num_split_features": "none",
}

NOTES = [
    "Both absorption numbers are lower-is-better; SAEBench's paper plots "
    "1 - absorption, which is higher-is-better.",
    "Tokens: SAEBench probes the word position of in-context prompts "
    "'{word} has the first letter:' over the model's vocabulary; sae-lens-ext "
    "probes the alphabetic tokens of the run's own text, split by distinct "
    "token into train and test (prompt_template and prompt_token_pos are "
    "therefore left out of eval_config).",
    "Probes: with probe_training 'saebench' (--preset saebench) the "
    "ground-truth probe, the L1 latent ranking and the k-sparse probes are "
    "trained as SAEBench trains them (Adam epochs, its L1 decay, scikit-learn "
    "k-sparse probes; k_sparse_probe_* in eval_config); with 'exact' (our "
    "default) each probe is solved to its optimum and the ranking uses an exact "
    "L1-penalised logistic probe (l1_penalty), so no k_sparse_probe_* setting "
    "applies.",
]


def absorption_eval(result, run) -> SAEBenchEval:
    """The first-letter letters table as SAEBench's absorption eval output."""
    letters = result.tables.get("letters")
    if letters is None:
        raise SAEBenchSkip(
            "the first-letter evaluation did not run (it needs a tokenizer and "
            "absorption.letters true)"
        )
    min_f1 = float(run.config.get("min_probe_f1", 0.6))
    present = letters[letters["probe_f1"] > min_f1]
    scored = present[present["probe_true_positives"] > 0]
    if len(present) < MIN_LETTERS or len(scored) < 2:
        raise SAEBenchSkip(
            f"only {len(present)} letters have a ground-truth probe F1 above "
            f"{min_f1} (mean F1 {letters['probe_f1'].mean():.2f}); SAEBench "
            f"reports no absorption below {MIN_LETTERS} such letters "
            "(min_feats_for_eval): this model does not represent first letters "
            "linearly at this hook"
        )
    fraction = scored["absorption_fraction"].astype(float)
    full = scored["absorption_rate"].astype(float)
    split = scored["k"].astype(float)
    metrics = {
        "mean": {
            "mean_absorption_fraction_score": float(fraction.mean()),
            "mean_full_absorption_score": float(full.mean()),
            "mean_num_split_features": float(split.mean()),
            "std_dev_absorption_fraction_score": float(fraction.std()),
            "std_dev_full_absorption_score": float(full.std()),
            "std_dev_num_split_features": float(split.std()),
        }
    }
    check_finite(metrics)
    details = [
        {
            "first_letter": str(row.letter),
            "mean_absorption_fraction": float(row.absorption_fraction),
            "full_absorption_rate": float(row.absorption_rate),
            "num_full_absorption": int(
                round(row.absorption_rate * row.probe_true_positives)
            ),
            "num_probe_true_positives": int(row.probe_true_positives),
            "num_split_features": int(row.k),
        }
        for row in scored.itertuples()
    ]
    extra = {
        key: value
        for key, value in result.metrics.items()
        if not key.startswith("first_letter_")
    }
    extra["letters_probed"] = int(len(letters))
    extra["mean_probe_f1"] = float(letters["probe_f1"].mean())
    extra_directions = {
        key: DIRECTIONS.get(key, DIRECTIONS.get(f"first_letter_{key}", "none"))
        for key in extra
    }
    return SAEBenchEval(
        eval_type_id=EVAL_TYPE_ID,
        eval_config={
            "model_name": run.model_name,
            "random_seed": run.seed,
            "f1_jump_threshold": float(run.config.get("f1_jump", 0.03)),
            "max_k_value": int(run.config.get("max_k", 10)),
            "min_GT_probe_f1": min_f1,
            "min_feats_for_eval": MIN_LETTERS,
            **_probe_settings(run.config),
        },
        metrics=metrics,
        details=details,
        directions=SAEBENCH_DIRECTIONS,
        extra_metrics=extra,
        extra_directions=extra_directions,
        notes=list(NOTES),
    )


def _probe_settings(config: dict) -> dict:
    """SAEBench's k-sparse probe settings, when our probes were trained its way."""
    if config.get("probe_training") != "saebench":
        return {}
    schedule = ranking_schedule(int(config.get("sparse_probe_epochs", 50)))
    return {
        "k_sparse_probe_l1_decay": schedule.l1,
        "k_sparse_probe_batch_size": schedule.batch_size,
        "k_sparse_probe_num_epochs": schedule.epochs,
    }


def absorption_warnings(result, run) -> list[str]:
    """Why the absorption numbers may mislead on this SAE and model."""
    warnings = []
    d_sae = int(run.sae.cfg.d_sae)
    if d_sae < MEANINGFUL_LATENTS:
        warnings.append(
            f"the SAE has {d_sae:,} latents: absorption is meaningful for SAEs of "
            "tens of thousands of latents (SAEBench's maintainers), so this "
            "rate is not comparable with published ones"
        )
    parameters = run.model_parameters()
    if parameters is None:
        warnings.append(
            "the model's size is unknown: absorption is meaningful on LLMs of "
            "about 1B+ parameters"
        )
    elif parameters < MEANINGFUL_PARAMETERS:
        warnings.append(
            f"the model has {parameters:,} parameters: absorption is meaningful "
            "on LLMs of about 1B+ parameters (SAEBench recommends >= 2B), where "
            "first letters are represented linearly"
        )
    base = run.base_metrics
    dead = base.get("dead_fraction")
    explained = base.get("explained_variance")
    signs = []
    if dead is not None and dead > UNDERTRAINED_DEAD_FRACTION:
        signs.append(f"{dead:.0%} of latents never fired")
    if explained is not None and explained < UNDERTRAINED_EXPLAINED_VARIANCE:
        signs.append(f"variance explained is {explained:.2f}")
    if signs:
        warnings.append(
            "the SAE shows signs of undertraining ("
            + ", ".join(signs)
            + "), and undertrained SAEs score misleadingly low absorption"
        )
    return warnings
