"""Entropy of histograms, in bits."""

from __future__ import annotations

import torch


def entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (bits) of each row of a count matrix ``[..., bins]``."""
    counts = counts.double()
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp_min(1)
    terms = torch.where(p > 0, -p * torch.log2(p), torch.zeros_like(p))
    return terms.sum(-1)


def binary_entropy(p: float) -> float:
    """H(p) = -p log2 p - (1-p) log2 (1-p), in bits."""
    return float(entropy_bits(torch.tensor([p, 1 - p], dtype=torch.float64)))
