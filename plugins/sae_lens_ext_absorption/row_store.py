"""Per-row sparse codes and token contexts, kept only for rows in a top-N list.

A row enters the store in the batch it is seen, if it entered some latent's
top-N list; it is dropped once no list refers to it any more.  Rows are
appended in increasing global id, so the ids stay sorted and lookups are a
binary search.  At most ``2 x d_sae x N`` rows are ever live.  The store
lives on the device of the activations it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StoredRows:
    """Codes and contexts of a set of rows, in increasing row id."""

    ids: torch.Tensor  # [r] int64
    code_latents: torch.Tensor  # [r, m] int32, -1 where unused
    code_values: torch.Tensor  # [r, m] float32, 0 where unused
    contexts: torch.Tensor  # [r, w] int32 token ids ending at the row, -1 pad

    def select(self, keep: torch.Tensor) -> StoredRows:
        """The rows where ``keep`` is True."""
        return StoredRows(
            self.ids[keep],
            self.code_latents[keep],
            self.code_values[keep],
            self.contexts[keep],
        )

    def to(self, device) -> StoredRows:
        """The same rows on ``device``."""
        return StoredRows(*(t.to(device) for t in vars(self).values()))

    @staticmethod
    def concat(
        parts: list[StoredRows], n_codes: int, n_context: int, device=None
    ) -> StoredRows:
        """Concatenate stored parts (which must be in increasing id order);
        no parts give an empty block on ``device``."""
        if not parts:
            return StoredRows(
                torch.empty(0, dtype=torch.long, device=device),
                torch.empty(0, n_codes, dtype=torch.int32, device=device),
                torch.empty(0, n_codes, device=device),
                torch.empty(0, n_context, dtype=torch.int32, device=device),
            )
        return StoredRows(
            torch.cat([p.ids for p in parts]),
            torch.cat([p.code_latents for p in parts]),
            torch.cat([p.code_values for p in parts]),
            torch.cat([p.contexts for p in parts]),
        )


class RowStore:
    """Sparse codes (top ``n_codes`` latents) and contexts of referenced rows."""

    def __init__(self, n_codes: int, n_context: int, device=None):
        self.n_codes = n_codes
        self.n_context = n_context
        self.device = device
        self.parts: list[StoredRows] = []
        self.size = 0
        self._next_prune = 65_536

    def add_entries(
        self,
        ids: torch.Tensor,
        slots: torch.Tensor,
        latents: torch.Tensor,
        values: torch.Tensor,
        token_context: torch.Tensor | None,
        positions: torch.Tensor | None,
    ) -> None:
        """Store rows ``ids`` of a batch from its firing entries: entry ``e``
        is latent ``latents[e]`` with activation ``values[e] > 0`` on row
        ``ids[slots[e]]`` (entries of other rows have ``slots[e] = -1``);
        ``positions`` is restricted to the stored rows.  Each row keeps its
        ``n_codes`` largest activations, taken from the entries the caller
        already has, so no pass over the ``d_sae`` columns of each row."""
        if ids.numel() == 0:
            return
        codes, code_values = top_entries(len(ids), slots, latents, values, self.n_codes)
        self._append(ids, codes, code_values, token_context, positions)

    def _append(self, ids, latents, values, token_context, positions) -> None:
        contexts = context_windows(
            token_context, positions, self.n_context, len(ids), ids.device
        )
        self.parts.append(StoredRows(ids.long(), latents, values, contexts))
        self.size += len(ids)

    def maybe_prune(self, live_ids) -> None:
        """Drop unreferenced rows once the store has grown well past its last
        live size; ``live_ids`` is a callable returning the sorted live ids."""
        if self.size < self._next_prune:
            return
        live = live_ids()
        self.parts = [p.select(torch.isin(p.ids, live)) for p in self.parts]
        self.parts = [p for p in self.parts if p.ids.numel()]
        if len(self.parts) > 1:
            self.parts = [
                StoredRows.concat(self.parts, self.n_codes, self.n_context, self.device)
            ]
        self.size = sum(p.ids.numel() for p in self.parts)
        self._next_prune = max(65_536, 2 * self.size)

    def rows(self) -> StoredRows:
        """All stored rows as one block."""
        return StoredRows.concat(self.parts, self.n_codes, self.n_context, self.device)


def context_windows(
    token_context: torch.Tensor | None,
    positions: torch.Tensor | None,
    width: int,
    n: int,
    device=None,
) -> torch.Tensor:
    """Token ids of the ``width`` positions ending at each row, -1 padded,
    on ``device``."""
    if token_context is None or positions is None:
        return torch.full((n, width), -1, dtype=torch.int32, device=device)
    positions = positions.to(device)
    seq, pos = positions[:, 0].long(), positions[:, 1].long()
    offsets = torch.arange(-width + 1, 1, device=positions.device)
    cols = pos[:, None] + offsets[None, :]
    valid = cols >= 0
    tokens = token_context.to(positions.device)[seq[:, None], cols.clamp_min(0)]
    return torch.where(valid, tokens, -1).to(torch.int32)


def top_entries(
    n_rows: int,
    slots: torch.Tensor,
    latents: torch.Tensor,
    values: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, its ``(latent, value)`` entries, or the ``width`` largest.

    Entry ``e`` belongs to row ``slots[e]`` (``-1``: to none).  Returns
    ``[n_rows, width]`` latents (int32, -1 where unused) and values (0 where
    unused).  Entries already grouped by row (as ``nonzero`` gives them) with
    at most ``width`` per row are placed as they come, with no sort; the
    ``width`` largest are only searched for otherwise.
    """
    keep = (slots >= 0).nonzero()[:, 0]
    slots, latents, values = (t.index_select(0, keep) for t in (slots, latents, values))
    values = values.float()
    counts = torch.bincount(slots, minlength=n_rows)
    grouped = bool((slots[1:] >= slots[:-1]).all())
    if not grouped or int(counts.max()) > width:
        order = values.argsort(descending=True, stable=True)
        slots, latents, values = (t[order] for t in (slots, latents, values))
        order = slots.argsort(stable=True)
        slots, latents, values = (t[order] for t in (slots, latents, values))
    rank = torch.arange(len(slots), device=slots.device) - (
        counts.cumsum(0) - counts
    ).index_select(0, slots)
    keep = (rank < width).nonzero()[:, 0]
    # flat positions in the [n_rows, width] outputs
    where = (slots * width + rank).index_select(0, keep)
    out_latents = torch.full(
        (n_rows * width,), -1, dtype=torch.int32, device=slots.device
    )
    out_values = torch.zeros(n_rows * width, device=slots.device)
    out_latents[where] = latents.index_select(0, keep).to(torch.int32)
    out_values[where] = values.index_select(0, keep)
    return out_latents.view(n_rows, width), out_values.view(n_rows, width)


def lookup(rows: StoredRows, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of ``ids`` in ``rows`` and whether each was found."""
    if rows.ids.numel() == 0:
        return torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    where = torch.searchsorted(rows.ids, ids).clamp_max(rows.ids.numel() - 1)
    return where, rows.ids[where] == ids
