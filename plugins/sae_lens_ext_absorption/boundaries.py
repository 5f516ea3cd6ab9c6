"""Where words start, for any tokenizer: the boundary convention of its vocabulary.

Tokenizers mark word boundaries differently:

- ``leading`` markers: GPT-2's byte-level BPE writes a space before a word as
  ``Ġ`` (``'Ġtoys'``), SentencePiece as ``▁`` (``'▁toys'``), and tokenizers
  read through ``decode`` (byte-level ones without readable pieces) as a
  plain space (``' toys'``);
- ``trailing`` markers: some SentencePiece and classic BPE vocabularies end a
  word's last piece with ``▁`` or ``</w>`` (``'toys▁'``, ``'toys</w>'``).

A piece *starts a word* when it carries a leading marker, or when the piece
before it ends one: it carries a trailing marker, is a bare marker, or its
text ends in a character that is not a letter or digit (space, newline,
punctuation, a special token).  Without a previous piece (the first position
of a context, or rows with no context) only a leading marker says so, so a
fragment is never taken for a word.  :func:`detect_convention` reads the
convention from the vocabulary; :class:`WordStartLetters` labels rows with
the first letter of word-starting alphabetic pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"
_UNKNOWN = -2
#: (name, marker, position) of the conventions, in the order ties are broken.
CONVENTIONS = (
    ("byte-level BPE (leading Ġ)", "\u0120", "leading"),
    ("SentencePiece (leading ▁)", "\u2581", "leading"),
    ("trailing ▁", "\u2581", "trailing"),
    ("trailing </w>", "</w>", "trailing"),
    ("leading space", " ", "leading"),
)
#: A convention needs at least this share of the vocabulary's pieces.
MIN_MARKED_SHARE = 0.01


class UnknownConvention(ValueError):
    """The vocabulary shows no word-boundary marker this module knows."""


@dataclass(frozen=True)
class BoundaryConvention:
    """How a vocabulary marks word boundaries, and where its pieces come from.

    ``source`` is ``"pieces"`` (``convert_ids_to_tokens``) or ``"decoded"``
    (``decode`` of each id, for tokenizers without readable pieces).
    """

    name: str
    marker: str
    position: str
    source: str
    marked_share: float

    def core(self, piece: str) -> str:
        """The piece without its boundary marker."""
        if self.position == "leading" and piece.startswith(self.marker):
            return piece[len(self.marker) :]
        if self.position == "trailing" and piece.endswith(self.marker):
            return piece[: -len(self.marker)]
        return piece


def vocabulary_pieces(tokenizer) -> tuple[list[str], str]:
    """Every token id's piece, and whether they are raw pieces or decoded text."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    size = size or getattr(tokenizer, "vocab_size", None)
    if size is None:
        raise UnknownConvention(
            "the tokenizer has neither a length nor vocab_size, so its vocabulary "
            "cannot be read"
        )
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
        return [p if isinstance(p, str) else "" for p in pieces], "pieces"
    return [tokenizer.decode([i]) for i in range(size)], "decoded"


def detect_convention(tokenizer) -> BoundaryConvention:
    """The boundary convention most of the vocabulary's pieces follow.

    Raises :class:`UnknownConvention` naming what was looked for when fewer
    than 1% of the pieces carry any known marker.
    """
    pieces, source = vocabulary_pieces(tokenizer)
    longer = [p for p in pieces if len(p) > 1]
    counts = []
    for _name, marker, position in CONVENTIONS:
        if position == "leading":
            count = sum(p.startswith(marker) for p in longer)
        else:
            count = sum(p.endswith(marker) and not p.startswith(marker) for p in longer)
        counts.append(count)
    best = max(range(len(CONVENTIONS)), key=lambda i: (counts[i], -i))
    share = counts[best] / max(len(longer), 1)
    if counts[best] == 0 or share < MIN_MARKED_SHARE:
        raise UnknownConvention(
            f"could not tell where words start: of {len(longer)} vocabulary pieces, "
            f"at most {share:.1%} carry a known word-boundary marker (leading Ġ, ▁ or "
            "space; trailing ▁ or </w>)"
        )
    name, marker, position = CONVENTIONS[best]
    return BoundaryConvention(name, marker, position, source, share)


def previous_tokens(batch) -> torch.Tensor | None:
    """The token before each row in its context (-1 at position 0), or None.

    Reads the host batch's ``token_context`` ``[b, seq]`` and ``positions``
    ``[n, 2]``; None when the batch has no context.
    """
    context = getattr(batch, "token_context", None)
    positions = getattr(batch, "positions", None)
    if context is None or positions is None:
        return None
    context, positions = context.long().cpu(), positions.long().cpu()
    sequence, position = positions[:, 0], positions[:, 1]
    before = context[sequence, (position - 1).clamp_min(0)]
    return torch.where(position > 0, before, -1)


class WordStartLetters:
    """Labels rows with the first letter of word-starting alphabetic pieces.

    Per token id (computed lazily): the letter (0-25) of its piece's first
    character when the piece without its marker is ASCII letters only,
    else -1; whether it carries a leading marker; whether it ends a word.
    """

    def __init__(self, tokenizer):
        if tokenizer is None or not hasattr(tokenizer, "decode"):
            raise TypeError(
                "the first-letter evaluation needs a tokenizer with decode(); "
                "pass the model's tokenizer or set letters=False"
            )
        self.tokenizer = tokenizer
        self.convention = detect_convention(tokenizer)
        self._letter = torch.full((0,), _UNKNOWN, dtype=torch.long)
        self._starts = torch.zeros(0, dtype=torch.bool)
        self._ends = torch.zeros(0, dtype=torch.bool)

    def piece(self, token: int) -> str:
        """The token's vocabulary piece (or decoded text)."""
        if self.convention.source == "pieces":
            return self.tokenizer.convert_ids_to_tokens([token])[0] or ""
        return self.tokenizer.decode([token])

    def text(self, token: int) -> str:
        """The token's decoded string."""
        return self.tokenizer.decode([token])

    def _fill(self, tokens: torch.Tensor) -> None:
        top = int(tokens.max()) + 1 if tokens.numel() else 0
        if top > len(self._letter):
            grow = top - len(self._letter)
            self._letter = torch.cat([self._letter, torch.full((grow,), _UNKNOWN)])
            self._starts = torch.cat([self._starts, torch.zeros(grow, dtype=bool)])
            self._ends = torch.cat([self._ends, torch.zeros(grow, dtype=bool)])
        missing = tokens[self._letter[tokens] == _UNKNOWN].unique()
        convention = self.convention
        for token in missing.tolist():
            piece = self.piece(token)
            core = convention.core(piece)
            marked = core != piece
            text = self.text(token)
            self._letter[token] = (
                LETTERS.index(core[0].lower())
                if core and core.isascii() and core.isalpha()
                else -1
            )
            self._starts[token] = marked and convention.position == "leading"
            self._ends[token] = (
                (marked and convention.position == "trailing")
                or (marked and not core)
                or not text
                or not text[-1].isalnum()
            )

    def word_starts(
        self, tokens: torch.Tensor, previous: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Whether each row's piece starts a word (``previous``: -1 unknown)."""
        tokens = tokens.long().cpu()
        self._fill(tokens)
        starts = self._starts[tokens].clone()
        if previous is not None:
            previous = previous.long().cpu()
            known = previous >= 0
            self._fill(previous[known])
            starts[known] |= self._ends[previous[known]]
        return starts

    def __call__(
        self, tokens: torch.Tensor, previous: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Letter index per row (-1: not a word-starting alphabetic piece)."""
        tokens = tokens.long().cpu()
        starts = self.word_starts(tokens, previous)
        return torch.where(starts, self._letter[tokens], -1)

    def alphabetic(self, tokens: torch.Tensor) -> torch.Tensor:
        """Whether each row's piece is alphabetic, word start or not."""
        tokens = tokens.long().cpu()
        self._fill(tokens)
        return self._letter[tokens] >= 0
