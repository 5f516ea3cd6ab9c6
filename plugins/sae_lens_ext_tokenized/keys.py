"""Token keys: which rows of the lookup tables an activation reads.

Every activation row has a *current token* (the token at its position) and a
*previous token* (the one before it, or :data:`NO_PREVIOUS` at the start of a
sequence).  The token table is indexed by the current token; the optional
pair table by a hash of (previous, current) into a fixed number of buckets.
An SAE with an upstream-SAE lookup also needs the upstream SAE's codes at the
same position (``upstream_codes``, ``[..., upstream d_sae]``).

For training through SAE-Lens's ``SAETrainer``, the keys travel inside the
batch: :func:`pack_tokens` appends them to the activations as two extra
float32 columns (and, for an upstream lookup, the upstream hook's activations
after them), so shuffling or mixing rows keeps every row with its keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

NO_PREVIOUS = -1
KEY_COLUMNS = 2
# Pair hash: the pair id (prev + 1) * vocab + cur, reduced modulo the Mersenne
# prime 2**31 - 1, scrambled by a multiplier (a bijection modulo the prime),
# then folded into the buckets.  Saved pair tables depend on these constants.
_HASH_PRIME = 2**31 - 1
_HASH_MULTIPLIER = 1_583_458_089
_FLOAT_EXACT_LIMIT = 2**24


class MissingTokensError(ValueError):
    """A tokenized SAE was asked to reconstruct without the token ids."""


@dataclass(frozen=True)
class TokenKeys:
    """Token ids for a batch of activations, shaped like its leading dims.

    ``tokens`` holds the current token ids; ``prev_tokens`` the previous ones
    (:data:`NO_PREVIOUS` where there is none); ``upstream_codes`` the upstream
    SAE's latent activations ``[..., upstream d_sae]`` (None when not bound).
    Either the tokens or the codes may be None when the SAE has no table
    keyed on them.
    """

    tokens: torch.Tensor | None
    prev_tokens: torch.Tensor | None
    upstream_codes: torch.Tensor | None = None

    def to(self, device) -> TokenKeys:
        """The same keys on ``device``."""
        return TokenKeys(*(_moved(t, device) for t in dataclasses.astuple(self)))

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """The activations' leading shape these keys are for."""
        if self.tokens is not None:
            return tuple(self.tokens.shape)
        return tuple(self.upstream_codes.shape[:-1])


def _moved(tensor, device):
    return None if tensor is None else tensor.to(device)


def previous_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Shift ``[..., seq]`` token ids right by one along the last dimension."""
    prev = torch.full_like(tokens, NO_PREVIOUS)
    prev[..., 1:] = tokens[..., :-1]
    return prev


def make_keys(
    tokens, prev_tokens=None, *, vocab_size: int, needs_prev: bool
) -> TokenKeys:
    """Validate token ids and build :class:`TokenKeys`.

    ``tokens`` may be ``[n]`` (flattened rows) or ``[batch, seq]`` (whole
    sequences).  Without ``prev_tokens``, sequences are shifted to get them;
    flattened rows cannot be, so a pair table then needs ``prev_tokens``.
    """
    tokens = _as_ids(tokens, "tokens")
    _check_range(tokens, 0, vocab_size, "tokens")
    if prev_tokens is None:
        if needs_prev and tokens.ndim < 2:
            raise ValueError(
                "this SAE has a token-pair table, so flattened tokens [n] need "
                "prev_tokens=... (the token before each row, -1 at a sequence "
                "start); or pass whole sequences [batch, seq]"
            )
        prev_tokens = (
            previous_tokens(tokens)
            if tokens.ndim >= 2
            else torch.full_like(tokens, NO_PREVIOUS)
        )
    else:
        prev_tokens = _as_ids(prev_tokens, "prev_tokens")
        if prev_tokens.shape != tokens.shape:
            raise ValueError(
                f"prev_tokens has shape {tuple(prev_tokens.shape)} but tokens has "
                f"{tuple(tokens.shape)}; give one previous token per token"
            )
        _check_range(prev_tokens, NO_PREVIOUS, vocab_size, "prev_tokens")
    return TokenKeys(tokens, prev_tokens.to(tokens.device))


def pair_rows(keys: TokenKeys, vocab_size: int, n_buckets: int) -> torch.Tensor:
    """Bucket of each (previous, current) pair in a table of ``n_buckets`` rows."""
    pair_id = (keys.prev_tokens + 1) * vocab_size + keys.tokens
    scrambled = (pair_id % _HASH_PRIME) * _HASH_MULTIPLIER % _HASH_PRIME
    return scrambled % n_buckets


def pack_tokens(
    acts: torch.Tensor,
    tokens: torch.Tensor,
    prev_tokens: torch.Tensor | None = None,
    upstream_acts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Append current and previous token ids to activation rows.

    ``acts`` is ``[n, d_in]`` and ``tokens``/``prev_tokens`` are ``[n]``; the
    result is ``[n, d_in + 2]`` in float32 (float64 stays float64), which
    holds token ids exactly below 2**24.  With ``upstream_acts`` (``[n,
    upstream d_in]``, the upstream SAE's hook at the same positions) they
    follow the ids: ``[n, d_in + 2 + upstream d_in]``.  A tokenized training
    SAE splits these columns off again, so SAE-Lens's ``SAETrainer`` (and any
    shuffling or mixing of rows on the way) needs no change.
    """
    if acts.ndim != 2:
        raise ValueError(f"pack_tokens wants acts [n, d_in], got {tuple(acts.shape)}")
    tokens = _as_ids(tokens, "tokens")
    prev = (
        torch.full_like(tokens, NO_PREVIOUS)
        if prev_tokens is None
        else _as_ids(prev_tokens, "prev_tokens")
    )
    if tokens.shape != (acts.shape[0],) or prev.shape != tokens.shape:
        raise ValueError(
            f"pack_tokens wants one token (and previous token) per activation row: "
            f"acts {tuple(acts.shape)}, tokens {tuple(tokens.shape)}, "
            f"prev_tokens {tuple(prev.shape)}"
        )
    if tokens.numel() and int(tokens.max()) >= _FLOAT_EXACT_LIMIT:
        raise ValueError("token ids of 2**24 or more cannot be packed exactly")
    dtype = torch.float64 if acts.dtype == torch.float64 else torch.float32
    columns = torch.stack([tokens, prev.to(tokens.device)], dim=1).to(acts.device)
    parts = [acts.to(dtype), columns.to(dtype)]
    if upstream_acts is not None:
        if upstream_acts.ndim != 2 or len(upstream_acts) != len(acts):
            raise ValueError(
                f"pack_tokens wants upstream_acts [n, upstream d_in] with one row per "
                f"activation row: acts {tuple(acts.shape)}, upstream_acts "
                f"{tuple(upstream_acts.shape)}"
            )
        parts.append(upstream_acts.to(device=acts.device, dtype=dtype))
    return torch.cat(parts, dim=1)


def split_upstream(
    batch: torch.Tensor, width: int, upstream_d_in: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``[n, width + upstream_d_in]`` into the first ``width`` columns and
    the upstream hook's activations after them (see :func:`pack_tokens`)."""
    if batch.ndim != 2 or batch.shape[1] != width + upstream_d_in:
        raise ValueError(
            f"expected a packed batch [n, d_in + {KEY_COLUMNS} + upstream d_in] = "
            f"[n, {width + upstream_d_in}] (activations, current token, previous "
            f"token, upstream activations), got {tuple(batch.shape)}; build batches "
            "with pack_tokens(acts, tokens, prev_tokens, upstream_acts)"
        )
    return batch[:, :width], batch[:, width:]


def unpack_tokens(
    batch: torch.Tensor, d_in: int, vocab_size: int
) -> tuple[torch.Tensor, TokenKeys]:
    """Split a packed batch into activations ``[n, d_in]`` and its keys."""
    if batch.ndim != 2 or batch.shape[1] != d_in + KEY_COLUMNS:
        raise ValueError(
            f"expected a packed batch [n, d_in + {KEY_COLUMNS}] = [n, {d_in + 2}] "
            f"(activations, current token, previous token), got "
            f"{tuple(batch.shape)}; build batches with pack_tokens(acts, tokens, "
            "prev_tokens)"
        )
    ids = batch[:, d_in:]
    if ids.dtype not in (torch.float32, torch.float64) or not torch.equal(
        ids, ids.round()
    ):
        raise ValueError(
            "the token columns of the packed batch are not whole numbers: keep "
            "packed batches in float32 (bf16/fp16 cannot hold token ids exactly)"
        )
    ids = ids.long()
    keys = make_keys(ids[:, 0], ids[:, 1], vocab_size=vocab_size, needs_prev=False)
    return batch[:, :d_in], keys


def _as_ids(values, name: str) -> torch.Tensor:
    values = torch.as_tensor(values)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer token ids, got dtype {values.dtype}; pass "
            "the model's input ids (e.g. model.to_tokens(text))"
        )
    return values.long()


def _check_range(ids: torch.Tensor, low: int, vocab_size: int, name: str) -> None:
    if ids.numel() == 0:
        return
    smallest, largest = int(ids.min()), int(ids.max())
    if smallest < low or largest >= vocab_size:
        raise ValueError(
            f"{name} holds ids in [{smallest}, {largest}] but the lookup table has "
            f"vocab_size={vocab_size} rows (valid: {max(low, 0)}..{vocab_size - 1}"
            f"{', or -1 for none' if low < 0 else ''}). Use the tokenizer of the "
            "model the SAE was trained on, or set vocab_size to its d_vocab."
        )
