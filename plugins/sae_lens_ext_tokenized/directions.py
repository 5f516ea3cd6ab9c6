"""Whether higher or lower is better for each token-identity metric.

How much of an SAE's activation the current token explains describes the
SAE; it is not a score, so the shares have no better direction.
"""

from __future__ import annotations

DIRECTIONS = {
    "token_share_of_activations": "none",
    "token_share_of_activations_in_sample": "none",
    "token_share_of_reconstruction": "none",
    "sae_explained_variance": "higher",
    "distinct_tokens": "none",
    "token_like_latent_fraction": "none",
    "median_latent_token_share": "none",
    "tokenized_sae_heldout_mse": "lower",
    "tokenized_sae_heldout_explained_variance": "higher",
    "tokenized_sae_steps": "none",
}
