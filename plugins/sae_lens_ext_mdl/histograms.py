"""Streaming histograms of quantised latent activations at several precisions.

A latent's activation ``a`` at precision (bin width) ``p`` becomes the symbol

- ``zero`` when ``a == 0`` (the latent is off), else
- ``(sign(a), floor(|a| / p))``.

Bins at precision ``2p`` are unions of bins at ``p`` (``floor(floor(x)/2)``),
so a coarser power-of-two precision never increases entropy.  Only non-zero
activations are binned (``torch.bincount`` over ``latent * width + bin``);
zeros are counted as ``n_tokens - n_nonzero``, so the cost of a batch is
proportional to its L0, and memory is ``O(d_sae x bins)`` whatever the number
of tokens.  The quantised value used for reconstruction is the bin midpoint.
"""

from __future__ import annotations

import torch

from .entropy import entropy_bits


class QuantisedHistograms:
    """Per-latent histograms of quantised activations at one precision."""

    def __init__(self, d_sae: int, precision: float):
        if not precision > 0:
            raise ValueError(f"precision must be > 0, got {precision}")
        self.d_sae = d_sae
        self.precision = precision
        self.width = 2  # symbols per latent: 2 * bin + is_negative
        self.counts = torch.zeros(d_sae, self.width, dtype=torch.int64)
        self.n_tokens = 0

    def symbols(self, values: torch.Tensor) -> torch.Tensor:
        """The non-zero symbol index ``2 * floor(|a| / p) + (a < 0)``."""
        bins = torch.floor(values.abs().double() / self.precision).long()
        return 2 * bins + (values < 0).long()

    def add(self, latents: torch.Tensor, values: torch.Tensor, n_tokens: int) -> None:
        """Count one batch's non-zero activations (``latents``, ``values``)."""
        self.n_tokens += n_tokens
        if values.numel() == 0:
            return
        symbols = self.symbols(values)
        needed = int(symbols.max()) + 1
        if needed > self.width:
            self._grow(max(needed, 2 * self.width))
        flat = latents.long() * self.width + symbols
        self.counts += torch.bincount(flat, minlength=self.d_sae * self.width).view(
            self.d_sae, self.width
        )

    def dequantise(self, values: torch.Tensor) -> torch.Tensor:
        """The bin midpoint of each non-zero value, with its sign."""
        bins = torch.floor(values.abs().double() / self.precision)
        return (torch.sign(values) * (bins + 0.5) * self.precision).to(values.dtype)

    def full_counts(self) -> torch.Tensor:
        """Counts with the zero symbol first: ``[d_sae, 1 + width]``."""
        zeros = self.n_tokens - self.counts.sum(-1, keepdim=True)
        return torch.cat([zeros, self.counts], dim=1)

    def entropy(self) -> torch.Tensor:
        """Entropy in bits of each latent's quantised distribution ``[d_sae]``."""
        return entropy_bits(self.full_counts())

    def bins_used(self) -> torch.Tensor:
        """Number of distinct non-zero symbols each latent used."""
        return (self.counts > 0).sum(-1)

    def _grow(self, width: int) -> None:
        grown = torch.zeros(self.d_sae, width, dtype=torch.int64)
        grown[:, : self.width] = self.counts
        self.counts, self.width = grown, width
