"""Initialise the lookup tables before training.

Token table: ``"unigram"`` (default, as in Dooms & Wilhelm): ``T[t]`` is
``scale`` times the model's activation at ``t`` right after BOS (the
activation of ``t`` with no context, defined for every token).  ``"mean"``:
``b_dec`` is the mean activation and ``T[t]`` the mean activation of token
``t`` minus it, so at step 0 the SAE already predicts every activation by its
token's mean; the pair table starts at the mean of what remains per
(previous, current) bucket.  ``"zeros"`` leaves the tables at zero.

Upstream table (:func:`init_upstream_table`): ``"lstsq"`` (default) fits
``U`` by ridge regression of what the other terms leave of the activations
on the upstream codes (for ``upstream_key="top1"``, on one-hot codes: the
mean residual where each upstream latent is the top one); ``"zeros"``.
"""

from __future__ import annotations

import torch

from .capture import check_vocab
from .keys import KEY_COLUMNS, pair_rows, unpack_tokens
from .upstream import key_weights, uses_token_table

INIT_METHODS = ("unigram", "mean", "zeros")
UPSTREAM_INIT_METHODS = ("lstsq", "zeros")


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
    width = sae.cfg.d_in + KEY_COLUMNS  # upstream columns, if any, are not used
    acts, keys = unpack_tokens(rows[:, :width], sae.cfg.d_in, sae.cfg.vocab_size)
    acts = acts.double()
    mean = init_b_dec_to_mean(sae, rows)
    if not uses_token_table(sae.cfg):
        return {"rows": len(acts)}
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
    if not uses_token_table(sae.cfg):
        return
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
        [row[0] for row in activation_rows(model, hook_name, pairs, batch_size)]
    )
    sae.W_lookup.copy_((scale * acts).to(sae.W_lookup.dtype))


def _group_means(values, groups, n_groups: int, shrinkage: float):
    sums = values.new_zeros(n_groups, values.shape[1])
    sums.index_add_(0, groups, values)
    counts = torch.bincount(groups, minlength=n_groups).to(values.dtype)
    return sums / (counts + shrinkage).clamp_min(1e-12).unsqueeze(1), counts


@torch.no_grad()
def init_upstream_table(
    sae, rows: torch.Tensor, ridge: float = 1e-3, chunk: int = 8192
) -> dict:
    """Fit ``U`` to what the SAE's other terms leave, from packed rows.

    ``rows`` are packed with upstream activations (``sae.packed_width``
    columns).  With ``G`` the upstream codes (one-hot top latents for
    ``upstream_key="top1"``) and ``R = x - b_dec - T[t] (- P[pair])``, ``U``
    solves ``(G^T G + ridge * mean(diag) * I) U = G^T R``; latents that never
    fire keep zero rows.  Returns the number of upstream latents seen.
    """
    sae.W_upstream_lookup.zero_()
    n_up = sae.cfg.upstream_d_sae
    gram = torch.zeros(n_up, n_up, dtype=torch.float64)
    cross = torch.zeros(n_up, sae.cfg.d_in, dtype=torch.float64)
    for part in rows.split(chunk):
        acts, keys = sae.unpack(part)
        with sae._using_keys(keys):  # U is zero: the tokens' (and pairs') term
            others = sae.lookup_term(acts.shape[:-1], torch.float64)
        residual = acts.double() - sae.b_dec.double() - others
        codes = key_weights(keys.upstream_codes.double(), sae.cfg.upstream_key)
        gram += codes.T @ codes
        cross += codes.T @ residual
    seen = gram.diagonal() > 0
    gram = gram[seen][:, seen]
    damping = ridge * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(len(gram), dtype=gram.dtype)
    solved = torch.linalg.solve(gram + damping * eye, cross[seen])
    sae.W_upstream_lookup[seen] = solved.to(sae.W_upstream_lookup.dtype)
    return {"upstream_latents_seen": int(seen.sum()), "rows": len(rows)}
