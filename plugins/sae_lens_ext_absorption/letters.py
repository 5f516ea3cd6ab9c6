"""A bounded sample of rows labelled with the first letter of the word they start.

Following Chanin et al. (2024) and SAEBench, only alphabetic pieces (ASCII
letters once the word-boundary marker is removed) take part, and only when
they start a word (:mod:`.boundaries`: a fragment such as ``'ing'`` has no
first letter of its own); the label is the lower-cased first letter.  The
sample keeps at most ``rows_per_token`` occurrences of each distinct token
and ``letter_rows`` rows in all, with each row's SAE input and its largest
latent activations, and counts how many rows of the stream were labelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .boundaries import LETTERS, WordStartLetters
from .row_store import top_entries
from .topk import entries_above, take


class LettersUnavailable(ValueError):
    """The first-letter evaluation cannot run on these rows; the message says why."""


def first_letter(text: str) -> int:
    """Index (0-25) of the first letter of an alphabetic token, else -1."""
    word = text.lstrip(" \u2581\u0120")
    if word and word.isascii() and word.isalpha():
        return LETTERS.index(word[0].lower())
    return -1


@dataclass
class LabelCounts:
    """How many streamed rows were alphabetic pieces, word starts, labelled."""

    rows: int = 0
    alphabetic: int = 0
    word_starts: int = 0
    labelled: int = 0

    def metrics(self) -> dict:
        """Shares of all rows (``labelled_fraction`` is the headline)."""
        total = max(self.rows, 1)
        return {
            "rows_seen": self.rows,
            "labelled_fraction": self.labelled / total,
            "alphabetic_fraction": self.alphabetic / total,
            "word_start_fraction": self.word_starts / total,
            "fragment_fraction": (self.alphabetic - self.labelled) / total,
        }


@dataclass
class LetterRows:
    """The labelled rows kept for probing."""

    sae_in: torch.Tensor  # [r, d_in]
    tokens: torch.Tensor  # [r]
    letters: torch.Tensor  # [r] 0-25
    code_latents: torch.Tensor  # [r, m] int64, -1 where unused
    code_values: torch.Tensor  # [r, m]

    def code_entries(self, rows: torch.Tensor, columns: torch.Tensor):
        """Non-zero codes of ``rows`` restricted to latents ``columns``, as
        ``(row, column, value)`` with rows and columns renumbered from 0."""
        column_of = torch.full((int(columns.max()) + 2,), -1, dtype=torch.long)
        column_of[columns] = torch.arange(len(columns))
        latents = self.code_latents[rows]
        mapped = column_of[latents.clamp(max=len(column_of) - 2)]
        mapped = torch.where(latents >= 0, mapped, -1)
        used = mapped >= 0
        row_index = torch.arange(len(rows))[:, None].expand_as(latents)[used]
        return row_index, mapped[used], self.code_values[rows][used]


class LetterSampler:
    """Streams batches into a capped sample of word-starting alphabetic rows."""

    def __init__(self, tokenizer, *, max_rows: int, rows_per_token: int, n_codes: int):
        self.letters = WordStartLetters(tokenizer)
        self.max_rows = max_rows
        self.rows_per_token = rows_per_token
        self.n_codes = n_codes
        self.seen = torch.zeros(0, dtype=torch.long)
        self.parts: list[LetterRows] = []
        self.n_rows = 0
        self.counts = LabelCounts()

    @property
    def full(self) -> bool:
        """Whether the sample has reached ``max_rows``."""
        return self.n_rows >= self.max_rows

    def update(self, tokens, sae_in, feature_acts, previous=None) -> None:
        """Keep this batch's eligible rows (word-starting alphabetic pieces,
        token not over its cap); ``previous`` is the token before each row
        (-1 or None: unknown)."""
        tokens = tokens.long().cpu()
        letters = self.letters(tokens, previous)
        self.counts.rows += len(tokens)
        self.counts.alphabetic += int(self.letters.alphabetic(tokens).sum())
        self.counts.word_starts += int(self.letters.word_starts(tokens, previous).sum())
        self.counts.labelled += int((letters >= 0).sum())
        if self.full:
            return
        rows = (letters >= 0).nonzero()[:, 0]
        if rows.numel() == 0:
            return
        rows = rows[self._within_cap(tokens[rows])]
        rows = rows[: self.max_rows - self.n_rows]
        if rows.numel() == 0:
            return
        kept = tokens[rows]
        self.seen.index_add_(0, kept, torch.ones_like(kept))
        on_device = rows.to(feature_acts.device)
        acts = feature_acts[on_device].detach().float()
        # each row's firing latents (its n_codes largest if more fire), from
        # one pass over the codes rather than a top-k per row, on the codes'
        # device; only the sample's sparse codes come to the CPU
        row, latent = entries_above(acts, 0.0)
        latents, values = top_entries(
            len(rows),
            row,
            latent,
            take(acts, row, latent),
            min(self.n_codes, acts.shape[1]),
        )
        self.parts.append(
            LetterRows(
                sae_in[rows.to(sae_in.device)].detach().float().cpu(),
                kept,
                letters[rows],
                latents.long().cpu(),
                values.cpu(),
            )
        )
        self.n_rows += rows.numel()

    def _within_cap(self, tokens: torch.Tensor) -> torch.Tensor:
        """Rows whose occurrence number of their token stays under the cap."""
        top = int(tokens.max()) + 1
        if top > len(self.seen):
            self.seen = torch.cat([self.seen, torch.zeros(top - len(self.seen)).long()])
        order = tokens.argsort(stable=True)
        sorted_tokens = tokens[order]
        first = torch.searchsorted(sorted_tokens, sorted_tokens, right=False)
        occurrence = torch.empty_like(tokens)
        occurrence[order] = torch.arange(len(tokens)) - first
        return self.seen[tokens] + occurrence < self.rows_per_token

    def rows(self) -> LetterRows:
        """All kept rows as one block."""
        if not self.parts:
            counts = self.counts.metrics()
            raise LettersUnavailable(
                f"none of the {self.counts.rows} rows is a word-starting alphabetic "
                f"piece ({counts['alphabetic_fraction']:.1%} are alphabetic pieces, "
                f"{counts['word_start_fraction']:.1%} start a word; tokenizer "
                f"convention: {self.letters.convention.name}); give it text data "
                "with words, or set letters=False"
            )
        fields = zip(*(vars(part).values() for part in self.parts), strict=True)
        return LetterRows(*(torch.cat(list(field)) for field in fields))
