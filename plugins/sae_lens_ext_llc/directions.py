"""Whether higher or lower is better for each LLC metric.

The LLC itself measures a model's effective complexity; it has no better
direction on its own.  The sampler diagnostics do.
"""

from __future__ import annotations

DIRECTIONS = {
    "llc": "none",
    "llc_se": "lower",
    "llc_std": "none",
    "init_loss": "lower",
    "n_params": "none",
    "r_hat": "closer_to_1",
    "ess": "higher",
    "geweke_z": "closer_to_0",
    "diverged_chains": "lower",
    "ok": "higher",
    "flags": "none",
    "seconds": "lower",
    "num_chains": "none",
    "num_draws": "none",
    "num_burnin": "none",
    "step_size": "none",
    "nbeta": "none",
    "localization": "none",
    "sparsity_coefficient": "none",
    "batch_size": "none",
    "n_samples": "none",
    "autocast": "none",
}
