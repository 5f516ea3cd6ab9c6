"""Reconstruction and spliced-CE metrics for tokenized and ordinary SAEs alike."""

from __future__ import annotations

import contextlib

import torch

from .keys import KEY_COLUMNS


def is_tokenized(sae) -> bool:
    """Whether ``sae`` reads token ids (has the token-binding API)."""
    return hasattr(sae, "using_tokens")


def keys_scope(sae, packed: torch.Tensor):
    """The keys of packed rows bound to a tokenized SAE; a no-op otherwise."""
    if is_tokenized(sae):
        return sae._using_keys(sae.unpack(packed)[1])
    return contextlib.nullcontext()


@torch.no_grad()
def reconstruction_metrics(sae, rows: torch.Tensor, chunk: int = 8192) -> dict:
    """MSE per element, explained variance and L0 on packed rows.

    ``rows`` are ``[n, d + 2]``, or ``[n, d + 2 + upstream d_in]`` for an SAE
    with an upstream lookup (a plain SAE reads the first ``d`` columns).
    """
    d_in = sae.cfg.d_in
    width = sae.packed_width if is_tokenized(sae) else d_in + KEY_COLUMNS
    if rows.ndim != 2 or rows.shape[1] not in (width, d_in + KEY_COLUMNS):
        raise ValueError(f"expected packed rows [n, {width}], got {tuple(rows.shape)}")
    was_training = sae.training
    sae.eval()
    sq_err = l0 = 0.0
    for part in rows.split(chunk):
        acts = part[:, :d_in]
        with keys_scope(sae, part):
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
    here are trained on.  A tokenized SAE takes its keys from the same
    forward pass (``capture_tokens``: input ids, and the upstream SAE's codes
    at its hook).  ``recovered`` is the fraction of the zero-ablation loss gap
    the splice closes.
    """
    totals = {"ce_loss_clean": 0.0, "ce_loss_spliced": 0.0, "ce_loss_zero": 0.0}
    was_training = sae.training
    sae.eval()
    capture = sae.capture_tokens(model) if is_tokenized(sae) else None
    for start in range(0, len(tokens), batch):
        part = tokens[start : start + batch].to(model.cfg.device)
        weight = len(part) / len(tokens)

        def splice(acts, hook):
            recon = sae(acts.to(sae.W_dec.dtype)).to(acts.dtype)
            acts[:, 1:] = recon[:, 1:]
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
    if capture is not None:
        capture.remove()
    sae.train(was_training)
    gap = totals["ce_loss_zero"] - totals["ce_loss_clean"]
    totals["ce_loss_recovered"] = (
        (totals["ce_loss_zero"] - totals["ce_loss_spliced"]) / gap
        if gap
        else float("nan")
    )
    return totals
