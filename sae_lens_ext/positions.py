"""Which token positions a run reads (``--positions``).

An SAE trained at some positions gives meaningless statistics at others, so
the shared pass (every analysis) and the CE splice use the same selection:

- ``all``: every position;
- ``skip-bos``: every position but the first, the default when the model
  prepends a BOS token;
- a list of positions, ``0,5,-1`` (negative ones count from the end);
- a token-id filter, ``tokens:13,42``: the positions holding those ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HELP = (
    "token positions to analyse and splice: all, skip-bos (default when the "
    "model prepends BOS), a list such as 0,5,-1, or tokens:ID,ID"
)


class PositionsError(ValueError):
    """A ``--positions`` value could not be read or does not fit the tokens."""


@dataclass(frozen=True)
class PositionFilter:
    """A selection of token positions; ``mask(tokens)`` applies it."""

    mode: str
    positions: tuple[int, ...] = ()
    token_ids: tuple[int, ...] = ()

    @property
    def spec(self) -> str:
        """The ``--positions`` value that gives this selection."""
        if self.mode == "list":
            return ",".join(str(p) for p in self.positions)
        if self.mode == "tokens":
            return "tokens:" + ",".join(str(t) for t in self.token_ids)
        return self.mode

    def describe(self) -> str:
        """One phrase for the model card."""
        if self.mode == "all":
            return "every position (BOS, if any, included)"
        if self.mode == "skip-bos":
            return "every position but the first (BOS excluded)"
        if self.mode == "list":
            return f"positions {self.spec} of each sequence only"
        return f"only positions holding token ids {self.spec[len('tokens:') :]}"

    def mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Boolean ``[n_seq, context]`` mask of the selected positions of ``tokens``."""
        n_seq, context = tokens.shape
        if self.mode == "tokens":
            ids = torch.tensor(self.token_ids, device=tokens.device)
            return torch.isin(tokens, ids)
        mask = torch.ones(n_seq, context, dtype=torch.bool, device=tokens.device)
        if self.mode == "skip-bos":
            mask[:, 0] = False
        elif self.mode == "list":
            bad = [p for p in self.positions if not -context <= p < context]
            if bad:
                raise PositionsError(
                    f"--positions {self.spec}: position {bad[0]} is outside the "
                    f"context of {context} tokens; choose positions in "
                    f"0..{context - 1} (or -{context}..-1 from the end)."
                )
            mask[:] = False
            mask[:, [p % context for p in self.positions]] = True
        return mask

    def count(self, tokens: torch.Tensor) -> int:
        """How many positions of ``tokens`` are selected; refuses a selection of none."""
        selected = int(self.mask(tokens).sum())
        if selected == 0:
            raise PositionsError(
                f"--positions {self.spec} selects no position of the "
                f"{tokens.shape[0]:,} sequences used; check the token ids or "
                "positions (or --dataset)."
            )
        return selected


ALL = PositionFilter("all")
SKIP_BOS = PositionFilter("skip-bos")


def parse_positions(spec: str) -> PositionFilter:
    """Read a ``--positions`` value (before any model is loaded)."""
    text = spec.strip().lower()
    if text in ("all", "skip-bos"):
        return PositionFilter(text)
    mode, _, numbers = text.rpartition(":")
    if mode not in ("", "tokens"):
        raise PositionsError(f"--positions {spec!r}: {HELP}.")
    try:
        values = tuple(int(v) for v in numbers.split(",") if v.strip())
    except ValueError:
        raise PositionsError(f"--positions {spec!r} is not readable: {HELP}.") from None
    if not values:
        raise PositionsError(f"--positions {spec!r} names no position: {HELP}.")
    if mode == "tokens":
        if min(values) < 0:
            raise PositionsError(f"--positions {spec!r}: token ids are >= 0.")
        return PositionFilter("tokens", token_ids=values)
    return PositionFilter("list", positions=values)


def default_positions(metadata, model) -> PositionFilter:
    """``skip-bos`` when the sequences start with BOS, else ``all``.

    The SAE's ``prepend_bos`` metadata decides, else the model's
    ``default_prepend_bos``.
    """
    prepends = metadata.prepend_bos
    if prepends is None:
        prepends = getattr(getattr(model, "cfg", None), "default_prepend_bos", True)
    return SKIP_BOS if prepends else ALL
