"""Initialise the lookup tables before training.

``"mean"`` (default): ``b_dec`` is the mean activation and ``T[t]`` the mean
activation of token ``t`` minus it, so at step 0 the SAE already predicts
every activation by its token's mean; the pair table starts at the mean of
what remains per (previous, current) bucket.  ``"unigram"``: ``T[t]`` is
``scale`` times the model's activation at ``t`` right after BOS (the
activation of ``t`` with no context, defined for every token).  ``"zeros"``
leaves the tables at zero.
"""

from __future__ import annotations

import torch

from .capture import check_vocab
from .keys import pair_rows, unpack_tokens

INIT_METHODS = ("mean", "unigram", "zeros")


@torch.no_grad()
def init_b_dec_to_mean(sae, rows: torch.Tensor) -> torch.Tensor:
    """Set ``b_dec`` to the mean of the activation rows; return that mean.

    ``rows`` may be packed (``[n, d_in + 2]``) or plain (``[n, d_in]``).
    """
    acts = rows[:, : sae.cfg.d_in].double()
    mean = acts.mean(0)
    sae.b_dec.copy_(mean.to(sae.b_dec.dtype))
    return mean


@torch.no_grad()
def init_tables_from_means(
    sae, rows: torch.Tensor, scale: float = 1.0, shrinkage: float = 0.0
) -> dict:
    """Mean initialisation from packed rows ``[n, d_in + 2]``; returns counts.

    Each row is ``sum / (count + shrinkage)``: rarely seen tokens and pair
    buckets are pulled towards zero (towards ``b_dec`` and the token row),
    which keeps noisy means of a few rows from hurting held-out data.
    Tokens never seen keep a zero row (they fall back to ``b_dec``).
    """
    acts, keys = unpack_tokens(rows, sae.cfg.d_in, sae.cfg.vocab_size)
    acts = acts.double()
    mean = init_b_dec_to_mean(sae, rows)
    centred = acts - mean
    token_means, token_counts = _group_means(
        centred, keys.tokens, sae.cfg.vocab_size, shrinkage
    )
    sae.W_lookup.copy_((scale * token_means).to(sae.W_lookup.dtype))
    stats = {"tokens_seen": int((token_counts > 0).sum()), "rows": len(acts)}
    if sae.cfg.pair_buckets:
        buckets = pair_rows(keys, sae.cfg.vocab_size, sae.cfg.pair_buckets)
        residual = centred - scale * token_means[keys.tokens]
        pair_means, pair_counts = _group_means(
            residual, buckets, sae.cfg.pair_buckets, shrinkage
        )
        sae.W_pair_lookup.copy_(pair_means.to(sae.W_pair_lookup.dtype))
        stats["pair_buckets_seen"] = int((pair_counts > 0).sum())
    return stats


@torch.no_grad()
def init_tables_from_unigrams(
    sae, model, hook_name: str, scale: float = 0.5, batch_size: int = 1024
) -> None:
    """Unigram initialisation: ``T[t] = scale * act([BOS, t])[1]``."""
    from .data import activation_rows

    check_vocab(sae, model.cfg.d_vocab)
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    device = sae.W_lookup.device
    pairs = torch.stack(
        [
            torch.full((model.cfg.d_vocab,), bos, dtype=torch.long, device=device),
            torch.arange(model.cfg.d_vocab, device=device),
        ],
        dim=1,
    )
    acts = torch.cat(
        [a for a, _, _ in activation_rows(model, hook_name, pairs, batch_size)]
    )
    sae.W_lookup.copy_((scale * acts).to(sae.W_lookup.dtype))


def _group_means(values, groups, n_groups: int, shrinkage: float):
    sums = values.new_zeros(n_groups, values.shape[1])
    sums.index_add_(0, groups, values)
    counts = torch.bincount(groups, minlength=n_groups).to(values.dtype)
    return sums / (counts + shrinkage).clamp_min(1e-12).unsqueeze(1), counts
