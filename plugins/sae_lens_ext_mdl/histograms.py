"""Streaming histograms of quantised latent activations at several precisions.

A latent's activation ``a`` at precision (bin width) ``p`` becomes the symbol

- ``zero`` when ``a == 0`` (the latent is off), else
- ``2 * floor(|a| / p) + (a < 0)`` (bin and sign).

Bins at precision ``2p`` are unions of bins at ``p`` (``floor(floor(x)/2)``),
so a coarser power-of-two precision never increases entropy, and the
counts at ``p * 2**j`` are pooled from those at ``p`` (``coarsened``): one
table at the finest precision serves the whole ladder.

Only non-zero activations are counted; zeros are ``n_tokens - non-zeros``, so
a batch costs O(L0).  Counts live in two parts:

- a dense ``int32`` table ``[d_sae, width]`` for the common symbols, added in
  place (``index_add_``); its width is fixed from the first batch (1.5x the
  99th percentile symbol), so one large outlier does not widen every row;
  larger symbols land in a sink column and are also buffered for
- a sparse tail: ``(latent << 32 | symbol)`` keys
  with counts, buffered and merged (``torch.unique``) when the buffer fills.

Memory is ``O(d_sae x width + distinct tail symbols)`` whatever the number of
tokens; batches and the entropy are processed in slices, so temporaries stay
a few MB.  The quantised value used for reconstruction is the bin midpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Work in slices of this many values or table cells, so temporaries stay small.
SLICE = 1 << 18
# Merge the tail buffer into the tail's unique keys when it holds this many.
TAIL_BUFFER = 1 << 20
SYMBOL_BITS = 32


class QuantisedHistograms:
    """Per-latent histograms of quantised activations at one precision."""

    def __init__(
        self, d_sae: int, precision: float, width: int | None = None, device=None
    ):
        if not precision > 0:
            raise ValueError(f"precision must be > 0, got {precision}")
        self.d_sae = d_sae
        # counts live on ``device`` (that of the activations)
        self.device = torch.device(device or "cpu")
        self.precision = precision
        self.width = width  # dense symbols per latent; set by the first batch
        # The dense table has one more column, a sink for tail symbols, so a
        # batch is counted with one index_add_ and no boolean indexing.
        self._table = None if width is None else self._zeros(width)
        self.tail_keys = torch.zeros(0, dtype=torch.long, device=self.device)
        self.tail_counts = torch.zeros(0, dtype=torch.long, device=self.device)
        self._buffer: list[torch.Tensor] = []
        self._buffered = 0
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
        if self._table is None:
            self._set_width(values)
        stride = self.width + 1
        for start in range(0, values.numel(), SLICE):
            part = slice(start, start + SLICE)
            symbols = self.symbols(values[part])
            latent = latents[part].long()
            flat = latent * stride + symbols.clamp_max(self.width)
            ones = torch.ones(flat.numel(), dtype=torch.int32, device=self.device)
            self._table.view(-1).index_add_(0, flat, ones)
            if int(symbols.max()) >= self.width:
                tail = (symbols >= self.width).nonzero().squeeze(1)
                self._buffer_tail(latent[tail], symbols[tail])

    @property
    def counts(self) -> torch.Tensor | None:
        """The dense counts ``[d_sae, width]`` (symbol ``s`` in column ``s``)."""
        return None if self._table is None else self._table[:, : self.width]

    def dequantise(self, values: torch.Tensor, levels: int = 0) -> torch.Tensor:
        """The bin midpoint of each non-zero value at ``precision * 2**levels``."""
        return bin_midpoints(values, self.precision * 2**levels)

    def nonzero_counts(self) -> torch.Tensor:
        """How many tokens each latent was non-zero on ``[d_sae]``."""
        self._merge_tail()
        total = torch.zeros(self.d_sae, dtype=torch.long, device=self.device)
        if self.counts is not None:
            for rows in self._row_blocks():
                total[rows] = self.counts[rows].sum(-1, dtype=torch.long)
        total.index_add_(0, self.tail_keys >> SYMBOL_BITS, self.tail_counts)
        return total

    def entropy(self) -> torch.Tensor:
        """Entropy in bits of each latent's quantised distribution ``[d_sae]``.

        Every latent has the same total ``N = n_tokens``, so
        ``H = log2 N - (1/N) sum_c c log2 c`` over the symbols' counts, the
        zero symbol's ``N - non-zeros`` included.
        """
        n = self.n_tokens
        if n == 0:
            return torch.zeros(self.d_sae, dtype=torch.float64, device=self.device)
        zeros = (n - self.nonzero_counts()).double()
        c_log_c = zeros * torch.log2(zeros.clamp_min(1))
        if self.counts is not None:
            for rows in self._row_blocks():
                counts = self.counts[rows].double()
                c_log_c[rows] += (counts * torch.log2(counts.clamp_min(1))).sum(-1)
        tail = self.tail_counts.double()
        c_log_c.index_add_(0, self.tail_keys >> SYMBOL_BITS, tail * torch.log2(tail))
        return math.log2(n) - c_log_c / n

    def bins_used(self) -> torch.Tensor:
        """Number of distinct non-zero symbols each latent used."""
        self._merge_tail()
        used = torch.zeros(self.d_sae, dtype=torch.long, device=self.device)
        if self.counts is not None:
            for rows in self._row_blocks():
                used[rows] = (self.counts[rows] > 0).sum(-1)
        used.index_add_(
            0, self.tail_keys >> SYMBOL_BITS, torch.ones_like(self.tail_keys)
        )
        return used

    def cells(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every non-empty ``(latent, symbol)`` cell and its count, tail included."""
        self._merge_tail()
        latent = self.tail_keys >> SYMBOL_BITS
        symbol = self.tail_keys & ((1 << SYMBOL_BITS) - 1)
        count = self.tail_counts
        if self.counts is not None:
            rows, columns = self.counts.nonzero(as_tuple=True)
            latent = torch.cat([rows, latent])
            symbol = torch.cat([columns, symbol])
            count = torch.cat([self.counts[rows, columns].long(), count])
        return latent, symbol, count

    def ladder_statistics(self, n_levels: int) -> LadderStatistics:
        """Entropy and bins used per latent at ``precision * 2**l``, ``l < n_levels``.

        The same numbers as ``coarsened(l).entropy()`` and ``.bins_used()``
        for every ``l``, from the non-empty cells alone: each cell's key
        ``(latent, sign, bin)`` is sorted once, and at level ``l`` the cells
        whose keys agree after ``bin >> l`` are consecutive, so pooling is a
        segment sum over O(cells) entries instead of a pass over the table
        ``[d_sae, width]`` per level.
        """
        latent, symbol, count = self.cells()
        nonzero = torch.zeros(self.d_sae, dtype=torch.long, device=self.device)
        nonzero.index_add_(0, latent, count)
        group = latent * 2 + symbol % 2  # (latent, sign)
        key, order = torch.sort((group << SYMBOL_BITS) | (symbol // 2))
        count = count[order]
        group, bins = key >> SYMBOL_BITS, key & ((1 << SYMBOL_BITS) - 1)
        n = self.n_tokens
        zeros = (n - nonzero).double()
        zero_terms = zeros * torch.log2(zeros.clamp_min(1))
        entropy = torch.zeros(
            n_levels, self.d_sae, dtype=torch.float64, device=self.device
        )
        bins_used = torch.zeros(
            n_levels, self.d_sae, dtype=torch.long, device=self.device
        )
        for level in range(n_levels):
            coarse = (group << SYMBOL_BITS) | (bins >> level)
            starts = torch.ones_like(coarse, dtype=torch.bool)
            starts[1:] = coarse[1:] != coarse[:-1]
            segment = starts.cumsum(0) - 1
            pooled = torch.zeros(
                int(starts.sum()), dtype=torch.long, device=self.device
            ).index_add_(0, segment, count)
            owner = group[starts] // 2
            pooled = pooled.double()
            c_log_c = zero_terms.clone().index_add_(
                0, owner, pooled * torch.log2(pooled)
            )
            entropy[level] = math.log2(n) - c_log_c / n if n else 0.0
            bins_used[level].index_add_(0, owner, torch.ones_like(owner))
        return LadderStatistics(entropy, bins_used, nonzero)

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
        coarse = QuantisedHistograms(
            self.d_sae, self.precision * group, device=self.device
        )
        coarse.n_tokens = self.n_tokens
        if self.counts is None:
            return coarse
        n_bins = -(-self.width // 2)
        padded = -(-n_bins // group) * group
        counts = torch.zeros(
            self.d_sae, padded, 2, dtype=torch.int32, device=self.device
        )
        counts.view(self.d_sae, -1)[:, : self.width] = self.counts
        pooled = counts.view(self.d_sae, -1, group, 2).sum(2, dtype=torch.int32)
        coarse.width = padded // group * 2
        coarse._table = self._zeros(coarse.width)
        coarse.counts.copy_(pooled.view(self.d_sae, -1))
        del counts, pooled
        self._merge_tail()
        latent = self.tail_keys >> SYMBOL_BITS
        symbol = self.tail_keys & ((1 << SYMBOL_BITS) - 1)
        symbol = 2 * ((symbol // 2) >> levels) + symbol % 2
        dense = symbol < coarse.width
        coarse._table.view(-1).index_add_(
            0,
            latent[dense] * (coarse.width + 1) + symbol[dense],
            self.tail_counts[dense].to(torch.int32),
        )
        coarse.tail_keys, coarse.tail_counts = merge_keys(
            (latent[~dense] << SYMBOL_BITS) | symbol[~dense], self.tail_counts[~dense]
        )
        return coarse

    def _set_width(self, values: torch.Tensor) -> None:
        sample = values[:: max(1, values.numel() // 100_000)]
        typical = torch.quantile(self.symbols(sample).double(), 0.99).item()
        self.width = max(2, 2 * math.ceil(0.75 * typical + 1))
        self._table = self._zeros(self.width)

    def _zeros(self, width: int) -> torch.Tensor:
        return torch.zeros(self.d_sae, width + 1, dtype=torch.int32, device=self.device)

    def _buffer_tail(self, latents: torch.Tensor, symbols: torch.Tensor) -> None:
        if int(symbols.max()) >= 1 << SYMBOL_BITS:
            raise ValueError(
                f"an activation is over 2**31 bins at precision {self.precision}; "
                "use a coarser precision"
            )
        self._buffer.append((latents << SYMBOL_BITS) | symbols)
        self._buffered += symbols.numel()
        if self._buffered >= TAIL_BUFFER:
            self._merge_tail()

    def _merge_tail(self) -> None:
        if not self._buffer:
            return
        keys = torch.cat([self.tail_keys, *self._buffer])
        counts = torch.cat(
            [
                self.tail_counts,
                torch.ones(self._buffered, dtype=torch.long, device=self.device),
            ]
        )
        self.tail_keys, self.tail_counts = merge_keys(keys, counts)
        self._buffer, self._buffered = [], 0

    def _row_blocks(self) -> list[slice]:
        """Slices of latents whose table rows fill about ``SLICE`` cells."""
        step = max(1, SLICE // max(self.width or 1, 1))
        return [slice(i, i + step) for i in range(0, self.d_sae, step)]


@dataclass
class LadderStatistics:
    """Per latent at every level of a ladder: what the result tables need."""

    entropy: torch.Tensor  # [levels, d_sae] bits
    bins_used: torch.Tensor  # [levels, d_sae] distinct non-zero symbols
    nonzero: torch.Tensor  # [d_sae] tokens the latent fired on


def bin_midpoints(values: torch.Tensor, precision: float) -> torch.Tensor:
    """The midpoint of each value's bin of width ``precision`` (sign kept)."""
    bins = torch.floor(values.abs().double() / precision)
    return (torch.sign(values) * (bins + 0.5) * precision).to(values.dtype)


def merge_keys(
    keys: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum ``counts`` of equal ``keys``: sorted unique keys and their totals."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    totals = torch.zeros(unique.numel(), dtype=torch.long, device=keys.device)
    totals.index_add_(0, inverse, counts)
    return unique, totals
