"""Per-latent precisions: bits allocated by marginal bits saved per unit of loss.

Quantising latent ``i`` at rung ``l`` of the ladder costs ``H[l, i]`` bits per
token and adds ``D[l, i]`` to the squared reconstruction error.  With an
affine decoder the error of quantising every latent is

    ||e - sum_i delta_i w_i||^2 = ||e||^2 + sum_i (delta_i^2 ||w_i||^2 - 2 delta_i e.w_i)
                                  + sum_{i != j} delta_i delta_j w_i.w_j

where ``w_i`` is latent ``i``'s column of the decode map (``decode(e_i) -
decode(0)``: rescaling, non-unit decoders and output normalisation
included) and ``e`` the unquantised error.  Rounding errors of different
latents are nearly independent, so the cross terms average out and the
error is close to additive: ``D[l, i]`` sums the first two terms.  The
allocation minimises ``sum_i H[l_i, i]`` subject to ``sum_i D[l_i, i] <=
budget`` by a Lagrange multiplier: each latent takes the rung minimising
``H + lam D``, i.e. it moves coarser while the bits it saves per unit of
loss exceed ``1 / lam``; ``lam`` is bisected to the smallest value whose
total loss fits the budget.  The cross terms are left out of the
prediction, so the result reports it as a prediction (tests check it
against a brute-force decode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BISECTION_STEPS = 80


@dataclass
class Allocation:
    """Each latent's rung, and the allocation's bits and predicted loss."""

    rungs: torch.Tensor  # [d_sae] index into the ladder
    bits: float
    predicted_loss_increase: float


def choose_rungs(bits: torch.Tensor, loss: torch.Tensor, lam: float) -> torch.Tensor:
    """Per latent, the rung minimising ``bits + lam * loss`` (``[rungs, d_sae]``)."""
    return (bits + lam * loss).argmin(0)


def allocate_precisions(
    bits: torch.Tensor, loss: torch.Tensor, budget: float
) -> Allocation:
    """Fewest total bits whose additive loss increase stays within ``budget``.

    ``bits`` and ``loss`` are ``[rungs, d_sae]`` (rung 0 the finest): bits per
    token and loss increase of each latent at each rung.  When even the
    most loss-averse choice exceeds the budget, that choice is returned.
    """
    bits, loss = bits.double(), loss.double()
    columns = torch.arange(bits.shape[1])

    def total(rungs):
        return float(loss[rungs, columns].sum())

    low, high = 0.0, 1.0
    while total(choose_rungs(bits, loss, high)) > budget and high < 1e30:
        low, high = high, high * 16
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if total(choose_rungs(bits, loss, middle)) <= budget:
            high = middle
        else:
            low = middle
    rungs = choose_rungs(bits, loss, high)
    return Allocation(rungs, float(bits[rungs, columns].sum()), total(rungs))


def decode_columns(sae, dtype=torch.float64, chunk: int = 1024) -> torch.Tensor:
    """``decode(e_i) - decode(0)`` for every latent ``i``: ``[d_sae, d_in]``.

    The columns of the SAE's decode map, whatever it does on top of
    ``a @ W_dec`` (scaling factors, output normalisation), provided it is
    affine (:func:`check_affine_decode`).
    """
    d_sae = int(sae.cfg.d_sae)
    param_dtype = sae.W_dec.dtype
    device = sae.W_dec.device
    with torch.no_grad():
        origin = sae.decode(torch.zeros(1, d_sae, dtype=param_dtype, device=device))
        parts = []
        for start in range(0, d_sae, chunk):
            stop = min(start + chunk, d_sae)
            eye = torch.zeros(stop - start, d_sae, dtype=param_dtype, device=device)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            parts.append((sae.decode(eye) - origin).to(dtype))
    return torch.cat(parts)


def check_affine_decode(sae, feature_acts: torch.Tensor, columns: torch.Tensor):
    """Raise ValueError when ``decode`` is not affine in the code on this batch."""
    with torch.no_grad():
        origin = sae.decode(torch.zeros_like(feature_acts[:1])).double()
        direct = sae.decode(feature_acts).double()
        predicted = origin + feature_acts.double() @ columns
    scale = direct.abs().max().clamp_min(1e-12)
    gap = float((direct - predicted).abs().max() / scale)
    if gap > max(1e-3, 8 * torch.finfo(sae.W_dec.dtype).eps):
        raise ValueError(
            f"this SAE's decode is not affine in its code (relative gap {gap:.2g}), "
            "so per-latent losses do not add up; set mdl.per_latent to False"
        )
