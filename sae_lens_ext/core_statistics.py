"""Reconstruction, shrinkage and model-behaviour statistics of SAEBench's core eval.

:class:`CoreStatistics` streams over the shared pass next to the base
analysis and computes, with SAEBench's formulas (its ``core`` eval, from
SAE-Lens's evals), per token ``t`` with input ``x_t`` and reconstruction
``y_t``, averaged over tokens:

- ``l1 = sum_i a_ti``; ``cossim = cos(x_t, y_t)``;
- ``l2_norm_in = |x_t|``, ``l2_norm_out = |y_t|``, ``l2_ratio = |y_t| / |x_t|``
  (``|x_t| < 1e-4`` counts as 1), ``relative_reconstruction_bias``: per batch
  ``mean |y|^2 / mean x.y``, averaged over batches;

and, for the SAEBench JSON only (:meth:`saebench_terms`), three numbers
whose formulas differ from the textbook ones we report:

- ``explained_variance``: ``1 - R / (S - M^2)`` with ``R`` the mean squared
  residual norm, ``S`` the mean squared input norm and ``M`` the mean of
  the squared input *elements* (means over batches of batch means);
- ``explained_variance_legacy``: per token ``1 - |x_t - y_t|^2 / |x_t - mean_b x|^2``
  (``mean_b`` over the token's batch), averaged;
- ``mse``: per token ``|x_t - y_t|^2 / n_b`` (``n_b`` tokens in the batch),
  averaged: it depends on the batch size;

and per latent the ``consistent_activation_heuristic``: firing tokens per
prompt it fires in (-1 for a latent that never fired, as SAEBench writes).
:func:`sae_lens_ext.downstream.downstream_metrics` gives the CE losses and
SAEBench's KL divergences with the SAE spliced in and zero-ablated.
"""

from __future__ import annotations

import torch

ZERO_NORM = 1e-4


class CoreStatistics:
    """Streamed per-token statistics of one SAE on the shared pass."""

    def __init__(self, d_sae: int, device=None):
        self.n = 0
        self.sums = dict.fromkeys(
            ("l1", "cossim", "l2_norm_in", "l2_norm_out", "l2_ratio", "legacy", "mse"),
            0.0,
        )
        self.batch_terms: list[tuple[float, float, float, float]] = []
        self.batch_rows: list[int] = []
        # per-latent counts stay on ``device`` (that of the activations)
        self.firing_tokens = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.firing_prompts = torch.zeros(d_sae, dtype=torch.float64, device=device)

    def update(self, batch) -> None:
        """Add one :class:`~sae_lens_ext.ActivationBatch`."""
        x = batch.sae_in.double()
        y = batch.sae_out.double()
        acts = batch.feature_acts
        n = x.shape[0]
        if n == 0:
            return
        residual = (x - y).pow(2).sum(1)
        norm_in, norm_out = x.norm(dim=1), y.norm(dim=1)
        dot = (x * y).sum(1)
        safe_in = torch.where(norm_in.abs() < ZERO_NORM, 1.0, norm_in)
        centred = (x - x.mean(0)).pow(2).sum(1)
        sums = self.sums
        sums["l1"] += acts.sum(dtype=torch.float64).item()
        sums["cossim"] += (dot / (norm_in * norm_out).clamp_min(1e-30)).sum().item()
        sums["l2_norm_in"] += norm_in.sum().item()
        sums["l2_norm_out"] += norm_out.sum().item()
        sums["l2_ratio"] += (norm_out / safe_in).sum().item()
        sums["legacy"] += (1 - residual / centred.clamp_min(1e-30)).sum().item()
        sums["mse"] += (residual / n).sum().item()
        self.batch_terms.append(
            (
                norm_out.pow(2).mean().item() / dot.mean().item(),
                x.pow(2).sum(1).mean().item(),
                x.pow(2).mean().item(),
                residual.mean().item(),
            )
        )
        self.n += n
        self.batch_rows.append(n)
        # from the firing entries only: a dense [n, d_sae] copy would not fit
        # for SAEs of a million latents
        d_sae = acts.shape[1]
        rows, latents = (acts > 0).nonzero(as_tuple=True)
        self.firing_tokens += torch.bincount(latents, minlength=d_sae)
        prompts = batch.positions[:, 0].to(rows.device)
        pairs = (prompts[rows] * d_sae + latents).unique()
        self.firing_prompts += torch.bincount(pairs % d_sae, minlength=d_sae)

    def metrics(self) -> dict[str, float]:
        """Means of the textbook statistics (for the base analysis's metrics)."""
        n = max(self.n, 1)
        terms = torch.tensor(self.batch_terms or [(float("nan"),) * 4]).double()
        return {
            "l1": self.sums["l1"] / n,
            "cossim": self.sums["cossim"] / n,
            "l2_norm_in": self.sums["l2_norm_in"] / n,
            "l2_norm_out": self.sums["l2_norm_out"] / n,
            "l2_ratio": self.sums["l2_ratio"] / n,
            "relative_reconstruction_bias": terms[:, 0].mean().item(),
        }

    def saebench_terms(self) -> dict:
        """SAEBench's own-formula numbers and per-latent prompt statistics."""
        n = max(self.n, 1)
        terms = torch.tensor(self.batch_terms or [(float("nan"),) * 4]).double()
        squares, element_squares, residual = terms[:, 1:].mean(0).tolist()
        return {
            "explained_variance": 1 - residual / (squares - element_squares**2),
            "explained_variance_legacy": self.sums["legacy"] / n,
            "mse": self.sums["mse"] / n,
            "n_batches": len(self.batch_rows),
            "tokens_per_batch": max(self.batch_rows, default=0),
            # SAEBench writes -1 where a latent never fired (0 / 0)
            "consistent_activation_heuristic": torch.where(
                self.firing_prompts > 0,
                self.firing_tokens / self.firing_prompts.clamp_min(1),
                -1.0,
            )
            .cpu()
            .tolist(),
        }
