"""Streaming histograms of quantised latent activations at several precisions.

A latent's activation ``a`` at precision (bin width) ``p`` becomes the symbol

- ``zero`` when ``a == 0`` (the latent is off), else
- ``(sign(a), floor(|a| / p))``.

Bins at precision ``2p`` are unions of bins at ``p`` (``floor(floor(x)/2)``),
so a coarser power-of-two precision never increases entropy, and the
counts at ``p * 2**j`` are pooled from those at ``p`` (``coarsened``): one
table at the finest precision serves the whole ladder.  Only non-zero
activations are counted, at index ``latent * width + symbol``;
zeros are counted as ``n_tokens - n_nonzero``, so the cost of a batch is
proportional to its L0, and memory is ``O(d_sae x bins)`` whatever the number
of tokens.  Counts are added in place (``index_add_``), so no table-sized
temporary is made per batch; counts are int32 (up to 2**31 tokens).  The
quantised value used for reconstruction is the bin midpoint.
"""

from __future__ import annotations

import math

import torch


class QuantisedHistograms:
    """Per-latent histograms of quantised activations at one precision."""

    def __init__(self, d_sae: int, precision: float):
        if not precision > 0:
            raise ValueError(f"precision must be > 0, got {precision}")
        self.d_sae = d_sae
        self.precision = precision
        self.width = 2  # symbols per latent: 2 * bin + is_negative
        self.counts = torch.zeros(d_sae, self.width, dtype=torch.int32)
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
            self._grow(max(needed + 64, self.width * 3 // 2))
        flat = latents.long() * self.width + symbols
        ones = torch.ones(flat.numel(), dtype=torch.int32)
        self.counts.view(-1).index_add_(0, flat, ones)

    def dequantise(self, values: torch.Tensor, levels: int = 0) -> torch.Tensor:
        """The bin midpoint of each non-zero value at ``precision * 2**levels``."""
        precision = self.precision * 2**levels
        bins = torch.floor(values.abs().double() / precision)
        return (torch.sign(values) * (bins + 0.5) * precision).to(values.dtype)

    def full_counts(self, rows: slice = slice(None)) -> torch.Tensor:
        """Counts with the zero symbol first: ``[latents, 1 + width]``."""
        counts = self.counts[rows].long()
        zeros = self.n_tokens - counts.sum(-1, keepdim=True)
        return torch.cat([zeros, counts], dim=1)

    def entropy(self) -> torch.Tensor:
        """Entropy in bits of each latent's quantised distribution ``[d_sae]``.

        Every latent has the same total ``N = n_tokens``, so
        ``H = log2 N - (1/N) sum_c c log2 c`` over the non-zero counts only.
        """
        n = self.n_tokens
        if n == 0:
            return torch.zeros(self.d_sae, dtype=torch.float64)
        latent, _ = (self.counts > 0).nonzero(as_tuple=True)
        counts = self.counts[self.counts > 0].double()
        zeros = (n - self.counts.sum(-1, dtype=torch.int64)).double()
        c_log_c = torch.zeros(self.d_sae, dtype=torch.float64)
        c_log_c.index_add_(0, latent, counts * torch.log2(counts))
        c_log_c += torch.where(zeros > 0, zeros * torch.log2(zeros.clamp_min(1)), 0.0)
        return math.log2(n) - c_log_c / n

    def bins_used(self) -> torch.Tensor:
        """Number of distinct non-zero symbols each latent used."""
        return (self.counts > 0).sum(-1)

    def coarsened(self, levels: int) -> QuantisedHistograms:
        """The same counts at precision ``precision * 2**levels``.

        Bin ``b`` at this precision falls in bin ``b >> levels`` at the coarser
        one (``floor(floor(x) / n) == floor(x / n)``), so pooling groups of
        ``2**levels`` bins of one sign gives exactly the histogram a second
        pass at the coarser precision would count.
        """
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        group = 2**levels
        n_bins = -(-self.width // 2)
        padded = -(-n_bins // group) * group
        counts = torch.zeros(self.d_sae, padded, 2, dtype=torch.int32)
        counts.view(self.d_sae, -1)[:, : self.width] = self.counts
        coarse = QuantisedHistograms(self.d_sae, self.precision * group)
        coarse.counts = counts.view(self.d_sae, -1, group, 2).sum(2, dtype=torch.int32)
        coarse.counts = coarse.counts.reshape(self.d_sae, -1)
        coarse.width = coarse.counts.shape[1]
        coarse.n_tokens = self.n_tokens
        return coarse

    def _grow(self, width: int) -> None:
        grown = torch.zeros(self.d_sae, width, dtype=torch.int32)
        grown[:, : self.width] = self.counts
        self.counts, self.width = grown, width
