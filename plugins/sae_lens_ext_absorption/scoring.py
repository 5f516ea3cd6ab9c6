"""Absorption of one direction on one input, from the latents' contributions.

Given a unit direction ``u`` (a letter probe, or a latent's own decoder
direction), an input ``x`` with projection ``P = x . u``, the *main* latents
that should carry ``u`` and the other active latents ``j`` with contribution
``c_j = a_j (W_dec[j] . u)``, this follows Chanin et al. (2024) as
implemented in SAEBench:

- absorption fraction: with ``M`` the main latents' contribution and ``T``
  the sum of the (at most three) largest positive contributions of other
  latents whose decoder cosine with ``u`` is at least ``cos_threshold``,
  it is 0 when ``M >= P`` or ``T < share_threshold * P``, 1 when ``M <= 0``,
  else ``A / (A + M)`` with ``A = min(T, P - M)``;
- full absorption: no main latent is active, ``P > 0``, and the single
  largest contribution comes from a latent with decoder cosine at least
  ``full_cos_threshold`` and carries at least ``share_threshold * P``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_ABSORBERS = 3
FULL_COS_THRESHOLD = 0.025


@dataclass
class AbsorptionScores:
    """Per-input absorption, and which candidate carried most of it."""

    fraction: torch.Tensor  # [c] in [0, 1]
    full: torch.Tensor  # [c] bool
    top_slot: torch.Tensor  # [c] index of the largest contribution, -1 if none
    top_share: torch.Tensor  # [c] that contribution / projection


def absorption_scores(
    projection: torch.Tensor,
    main_contribution: torch.Tensor,
    main_active: torch.Tensor,
    contributions: torch.Tensor,
    cosines: torch.Tensor,
    *,
    share_threshold: float,
    cos_threshold: float,
    full_cos_threshold: float = FULL_COS_THRESHOLD,
) -> AbsorptionScores:
    """Absorption fraction and full absorption of ``c`` inputs at once.

    ``contributions`` and ``cosines`` are ``[c, m]``: the other active
    latents of each input (unused slots: contribution 0, cosine 0).
    """
    projection = projection.float()
    main = main_contribution.float()
    contributions = contributions.float()
    eligible = (cosines >= cos_threshold) & (contributions > 0)
    candidates = torch.where(eligible, contributions, 0.0)
    k = min(MAX_ABSORBERS, candidates.shape[1])
    top_sum = candidates.topk(k, dim=1).values.sum(1) if k else torch.zeros_like(main)
    safe = torch.where(projection > 0, projection, 1.0)
    enough = (projection > 0) & (top_sum >= share_threshold * safe)
    absorbed = torch.minimum(top_sum, projection - main)
    partial = absorbed / (absorbed + main).clamp_min(1e-12)
    fraction = torch.where(main <= 0, 1.0, partial.clamp(0.0, 1.0))
    fraction = torch.where((main >= projection) | ~enough, 0.0, fraction)

    if contributions.shape[1]:
        top_value, top_slot = contributions.max(dim=1)
        top_cos = cosines.gather(1, top_slot[:, None])[:, 0]
    else:
        top_value = torch.zeros_like(main)
        top_slot = torch.zeros_like(main, dtype=torch.long)
        top_cos = torch.zeros_like(main)
    has_top = top_value > 0
    top_share = torch.where(projection > 0, top_value / safe, 0.0)
    full = (
        ~main_active
        & (projection > 0)
        & has_top
        & (top_cos >= full_cos_threshold)
        & (top_share >= share_threshold)
    )
    return AbsorptionScores(
        fraction=fraction,
        full=full,
        top_slot=torch.where(has_top, top_slot, -1),
        top_share=top_share,
    )
