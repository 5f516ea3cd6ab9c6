"""Reconstruction and spliced-CE metrics for tokenized and ordinary SAEs alike."""

from __future__ import annotations

import contextlib

import torch

from .keys import KEY_COLUMNS


def is_tokenized(sae) -> bool:
    """Whether ``sae`` reads token ids (has the token-binding API)."""
    return hasattr(sae, "using_tokens")


def token_scope(sae, tokens, prev_tokens=None):
    """``sae.using_tokens(...)`` for a tokenized SAE, a no-op context otherwise."""
    if is_tokenized(sae):
        return sae.using_tokens(tokens, prev_tokens)
    return contextlib.nullcontext()


@torch.no_grad()
def reconstruction_metrics(sae, rows: torch.Tensor, chunk: int = 8192) -> dict:
    """MSE per element, explained variance and L0 on packed rows ``[n, d + 2]``."""
    d_in = sae.cfg.d_in
    if rows.ndim != 2 or rows.shape[1] != d_in + KEY_COLUMNS:
        raise ValueError(
            f"expected packed rows [n, {d_in + KEY_COLUMNS}], got {tuple(rows.shape)}"
        )
    was_training = sae.training
    sae.eval()
    sq_err = l0 = 0.0
    for part in rows.split(chunk):
        acts = part[:, :d_in]
        ids = part[:, d_in:].long()
        with token_scope(sae, ids[:, 0], ids[:, 1]):
            feats = sae.encode(acts.to(sae.W_dec.dtype))
            recon = sae.decode(feats).float()
        sq_err += (acts - recon).double().pow(2).sum().item()
        l0 += (feats != 0).sum().item()
    sae.train(was_training)
    acts = rows[:, :d_in].double()
    total_var = (acts - acts.mean(0)).pow(2).sum().item()
    n = len(rows)
    return {
        "mse": sq_err / (n * d_in),
        "explained_variance": 1.0 - sq_err / total_var,
        "l0": l0 / n,
    }


@torch.no_grad()
def ce_metrics(model, hook_name: str, sae, tokens: torch.Tensor, batch: int = 32):
    """Clean, spliced and zero-ablated next-token CE loss on ``tokens``.

    The SAE's reconstruction (zeros, for the ablation) replaces the hook's
    activations at every position but the first (BOS), the positions SAEs
    here are trained on.  ``recovered`` is the fraction of the zero-ablation
    loss gap the splice closes.
    """
    totals = {"ce_loss_clean": 0.0, "ce_loss_spliced": 0.0, "ce_loss_zero": 0.0}
    was_training = sae.training
    sae.eval()
    for start in range(0, len(tokens), batch):
        part = tokens[start : start + batch].to(model.cfg.device)
        weight = len(part) / len(tokens)

        def splice(acts, hook, part=part):
            body = acts[:, 1:].to(sae.W_dec.dtype)
            with token_scope(sae, part[:, 1:], part[:, :-1]):
                acts[:, 1:] = sae(body).to(acts.dtype)
            return acts

        def zero(acts, hook):
            acts[:, 1:] = 0.0
            return acts

        for key, hooks in (
            ("ce_loss_clean", []),
            ("ce_loss_spliced", [(hook_name, splice)]),
            ("ce_loss_zero", [(hook_name, zero)]),
        ):
            loss = model.run_with_hooks(part, return_type="loss", fwd_hooks=hooks)
            totals[key] += loss.item() * weight
    sae.train(was_training)
    gap = totals["ce_loss_zero"] - totals["ce_loss_clean"]
    totals["ce_loss_recovered"] = (
        (totals["ce_loss_zero"] - totals["ce_loss_spliced"]) / gap
        if gap
        else float("nan")
    )
    return totals
