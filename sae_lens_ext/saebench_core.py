"""The base analysis as SAEBench's ``core`` eval, and the base metrics' directions.

Every metric of SAEBench's core eval is computed as SAEBench computes it:
streamed statistics from :mod:`.core_statistics`, firing frequencies from
the base analysis's ``latents`` table, and weight-based metrics (encoder /
decoder norms, biases and each latent's largest cosine with any other
latent) from the SAE here.  Where SAEBench's formula differs from the
textbook one we report in ``summary.json`` (explained variance, MSE), the
textbook value goes in the separate block.
"""

from __future__ import annotations

import torch

from .saebench import SAEBenchEval, SAEBenchRun, SAEBenchSkip, check_finite

EVAL_TYPE_ID = "core"
COSINE_BLOCK_ENTRIES = 1 << 24

BASE_DIRECTIONS = {
    "n_tokens": "none",
    "d_in": "none",
    "d_sae": "none",
    "l0": "none",
    "mse": "lower",
    "explained_variance": "higher",
    "dead_fraction": "lower",
    "dense_fraction": "lower",
    "l1": "none",
    "cossim": "higher",
    "l2_norm_in": "none",
    "l2_norm_out": "none",
    "l2_ratio": "closer_to_1",
    "relative_reconstruction_bias": "closer_to_1",
    "ce_loss_clean": "none",
    "ce_loss_spliced": "lower",
    "ce_loss_zero_ablated": "none",
    "ce_loss_recovered": "higher",
    "kl_div_with_sae": "lower",
    "kl_div_with_ablation": "none",
    "kl_div_score": "higher",
    "ce_tokens": "none",
}

CORE_DIRECTIONS = {
    "model_behavior_preservation.kl_div_score": "higher",
    "model_behavior_preservation.kl_div_with_ablation": "none",
    "model_behavior_preservation.kl_div_with_sae": "lower",
    "model_performance_preservation.ce_loss_score": "higher",
    "model_performance_preservation.ce_loss_with_ablation": "none",
    "model_performance_preservation.ce_loss_with_sae": "lower",
    "model_performance_preservation.ce_loss_without_sae": "none",
    "reconstruction_quality.explained_variance": "higher",
    "reconstruction_quality.explained_variance_legacy": "higher",
    "reconstruction_quality.mse": "lower",
    "reconstruction_quality.cossim": "higher",
    "shrinkage.l2_norm_in": "none",
    "shrinkage.l2_norm_out": "none",
    "shrinkage.l2_ratio": "closer_to_1",
    "shrinkage.relative_reconstruction_bias": "closer_to_1",
    "sparsity.l0": "none",
    "sparsity.l1": "none",
    "token_stats.total_tokens_eval_reconstruction": "none",
    "token_stats.total_tokens_eval_sparsity_variance": "none",
    "misc_metrics.freq_over_1_percent": "lower",
    "misc_metrics.freq_over_10_percent": "lower",
    "misc_metrics.normalized_freq_over_1_percent": "lower",
    "misc_metrics.normalized_freq_over_10_percent": "lower",
    "misc_metrics.average_max_encoder_cosine_sim": "lower",
    "misc_metrics.average_max_decoder_cosine_sim": "lower",
    "misc_metrics.frac_alive": "higher",
}


def core_eval(result, run: SAEBenchRun) -> SAEBenchEval:
    """The base analysis's result as SAEBench's ``core`` eval output."""
    metrics, terms = result.metrics, result.saebench
    if "kl_div_with_sae" not in metrics:
        raise SAEBenchSkip(
            "SAEBench's core eval needs the CE and KL losses with the SAE spliced "
            "in; run with a model and --base.ce_batches >= 1"
        )
    if not terms:
        raise SAEBenchSkip("the base analysis recorded no SAEBench statistics")
    density = torch.tensor(
        result.tables["latents"]["firing_frequency"].to_numpy(), dtype=torch.float64
    )
    weights = weight_metrics(run.sae)
    eval_metrics = {
        "model_behavior_preservation": {
            "kl_div_score": metrics["kl_div_score"],
            "kl_div_with_ablation": metrics["kl_div_with_ablation"],
            "kl_div_with_sae": metrics["kl_div_with_sae"],
        },
        "model_performance_preservation": {
            "ce_loss_score": metrics["ce_loss_recovered"],
            "ce_loss_with_ablation": metrics["ce_loss_zero_ablated"],
            "ce_loss_with_sae": metrics["ce_loss_spliced"],
            "ce_loss_without_sae": metrics["ce_loss_clean"],
        },
        "reconstruction_quality": {
            "explained_variance": terms["explained_variance"],
            "explained_variance_legacy": terms["explained_variance_legacy"],
            "mse": terms["mse"],
            "cossim": metrics["cossim"],
        },
        "shrinkage": {
            key: metrics[key]
            for key in (
                "l2_norm_in",
                "l2_norm_out",
                "l2_ratio",
                "relative_reconstruction_bias",
            )
        },
        "sparsity": {"l0": metrics["l0"], "l1": metrics["l1"]},
        "token_stats": {
            "total_tokens_eval_reconstruction": int(metrics["ce_tokens"]),
            "total_tokens_eval_sparsity_variance": int(metrics["n_tokens"]),
        },
        "misc_metrics": {
            **density_metrics(density),
            "average_max_encoder_cosine_sim": weights["max_encoder_cosine_sim"]
            .mean()
            .item(),
            "average_max_decoder_cosine_sim": weights["max_decoder_cosine_sim"]
            .mean()
            .item(),
        },
    }
    check_finite(eval_metrics)
    cah = terms["consistent_activation_heuristic"]
    details = [
        {
            "index": i,
            "feature_density": float(density[i]),
            "consistent_activation_heuristic": float(cah[i]),
            **{key: float(values[i]) for key, values in weights.items()},
        }
        for i in range(len(density))
    ]
    context_size = getattr(run.sae.cfg.metadata, "context_size", None)
    return SAEBenchEval(
        eval_type_id=EVAL_TYPE_ID,
        eval_config={
            "model_name": run.model_name,
            "llm_dtype": str(getattr(run.model.cfg, "dtype", "float32")).replace(
                "torch.", ""
            ),
            "n_eval_reconstruction_batches": int(run.config.get("ce_batches", 0)),
            "n_eval_sparsity_variance_batches": int(terms["n_batches"]),
            "dataset": str(run.summary.get("dataset")),
            **({"context_size": int(context_size)} if context_size else {}),
            "compute_kl": True,
            "compute_ce_loss": True,
            "compute_l2_norms": True,
            "compute_sparsity_metrics": True,
            "compute_variance_metrics": True,
            "compute_featurewise_density_statistics": True,
            "compute_featurewise_weight_based_metrics": True,
            "exclude_special_tokens_from_reconstruction": False,
        },
        metrics=eval_metrics,
        details=details,
        directions=CORE_DIRECTIONS,
        extra_metrics={
            "explained_variance_centred": metrics["explained_variance"],
            "mse_per_element": metrics["mse"],
            "dead_fraction": metrics["dead_fraction"],
            "tokens_per_batch": int(terms["tokens_per_batch"]),
        },
        extra_directions={
            "explained_variance_centred": "higher",
            "mse_per_element": "lower",
            "dead_fraction": "lower",
            "tokens_per_batch": "none",
        },
        notes=[
            "explained_variance follows SAEBench's formula 1 - R / (S - M^2) "
            "(S: mean squared input norm, M: mean squared input element); "
            "explained_variance_centred is 1 - SSE / sum of squared deviations "
            "from the per-dimension mean (our summary.json's explained_variance).",
            "mse follows SAEBench: each token's squared error norm divided by "
            f"the tokens in its batch ({int(terms['tokens_per_batch'])} here), "
            "so it scales with the batch size; mse_per_element is the plain "
            "mean squared error per element.",
            "Statistics, and the splicing and zero-ablation for the CE and KL "
            "losses, use the positions of the shared pass (by default every "
            "position but BOS); SAEBench uses every position unless "
            "exclude_special_tokens_from_reconstruction. CE and KL are means "
            "over every next-token prediction on both sides.",
        ],
    )


def density_metrics(density: torch.Tensor) -> dict[str, float]:
    """SAEBench's firing-frequency summaries of the per-latent densities."""
    total = density.sum()

    def share(mask):
        return (density[mask].sum() / total).item() if total > 0 else 0.0

    return {
        "freq_over_1_percent": (density > 0.01).double().mean().item(),
        "freq_over_10_percent": (density > 0.1).double().mean().item(),
        "normalized_freq_over_1_percent": share(density > 0.01),
        "normalized_freq_over_10_percent": share(density > 0.1),
        "frac_alive": (density > 0).double().mean().item(),
    }


def weight_metrics(sae) -> dict[str, torch.Tensor]:
    """Per latent: encoder bias and norm, encoder-decoder cosine, max cosines."""
    w_enc = sae.W_enc.detach().float()  # [d_in, d_sae]
    w_dec = sae.W_dec.detach().float()  # [d_sae, d_in]
    bias = getattr(sae, "b_mag", None)
    if bias is None:
        bias = getattr(sae, "b_enc", None)
    if bias is None:
        bias = torch.zeros(w_dec.shape[0])
    unit_enc = torch.nn.functional.normalize(w_enc, dim=0)
    unit_dec = torch.nn.functional.normalize(w_dec, dim=1)
    return {
        "encoder_bias": bias.detach().float().cpu(),
        "encoder_norm": w_enc.norm(dim=0).cpu(),
        "encoder_decoder_cosine_sim": (unit_enc.T * unit_dec).sum(1).cpu(),
        "max_encoder_cosine_sim": max_other_cosine(unit_enc.T).cpu(),
        "max_decoder_cosine_sim": max_other_cosine(unit_dec).cpu(),
    }


def max_other_cosine(unit_rows: torch.Tensor) -> torch.Tensor:
    """Each unit row's largest cosine with any other row, a block of rows at a time.

    Blocks hold about ``COSINE_BLOCK_ENTRIES`` cosines, so memory stays
    bounded for SAEs of a million latents (whose ``d_sae^2`` products take a
    while on a CPU: a progress bar shows them).
    """
    from tqdm.auto import tqdm

    n = unit_rows.shape[0]
    step = max(1, COSINE_BLOCK_ENTRIES // n)
    out = torch.empty(n, device=unit_rows.device)
    starts = range(0, n, step)
    for start in tqdm(starts, desc="max cosines", disable=len(starts) < 16):
        block = unit_rows[start : start + step] @ unit_rows.T
        rows = torch.arange(block.shape[0], device=unit_rows.device)
        block[rows, rows + start] = float("-inf")
        out[start : start + step] = block.max(1).values
    return out
