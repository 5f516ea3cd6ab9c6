"""Activation rows with their token keys, from a model and token sequences."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from sae_lens_ext.shared_pass import check_activations, model_activations
from sae_lens_ext.tokens import load_token_file

from .keys import NO_PREVIOUS, pack_tokens


def load_tokens(dataset, model, context_size: int | None = None) -> torch.Tensor:
    """Token ids ``[n_seq, ctx]`` from a tensor or a ``.safetensors``/``.txt`` file."""
    if isinstance(dataset, torch.Tensor):
        tokens = dataset
    elif isinstance(dataset, str | Path) and Path(dataset).is_file():
        context = context_size or model.cfg.n_ctx
        tokens = load_token_file(Path(dataset), model.tokenizer, context, True)
    else:
        raise ValueError(
            f"dataset {dataset!r} is neither a [n_seq, ctx] tensor of token ids nor "
            "an existing .safetensors (key 'tokens') or .txt file"
        )
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(
            f"token dataset must be [n_seq, ctx] with ctx >= 2, got {tuple(tokens.shape)}"
        )
    if int(tokens.max()) >= model.cfg.d_vocab or int(tokens.min()) < 0:
        raise ValueError(
            f"token ids span [{int(tokens.min())}, {int(tokens.max())}] but the model "
            f"has d_vocab={model.cfg.d_vocab}; tokenize with the model's tokenizer"
        )
    return tokens.long()


def activation_rows(
    model, hook_name: str, tokens: torch.Tensor, batch_seqs: int = 32
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(acts [n, d], tokens [n], prev_tokens [n])`` per batch of sequences.

    Position 0 (BOS) is skipped, as in the host's shared pass.
    """
    batches = (tokens[i : i + batch_seqs] for i in range(0, len(tokens), batch_seqs))
    for hook_acts in model_activations(model, hook_name, batches, skip_bos=True):
        seq, pos = hook_acts.positions[:, 0], hook_acts.positions[:, 1]
        prev = hook_acts.token_context[seq, (pos - 1).clamp_min(0)]
        prev = torch.where(pos > 0, prev, torch.full_like(prev, NO_PREVIOUS))
        check_activations(hook_acts.sae_in, model.cfg.d_model, hook_name)
        yield hook_acts.sae_in.float(), hook_acts.tokens, prev


def packed_rows(model, hook_name: str, tokens: torch.Tensor) -> torch.Tensor:
    """All activation rows of ``tokens`` packed with their keys ``[n, d + 2]``."""
    return torch.cat(
        [pack_tokens(*row) for row in activation_rows(model, hook_name, tokens)]
    )


def shuffled_batches(
    model,
    hook_name: str,
    tokens: torch.Tensor,
    batch_size: int,
    *,
    buffer_seqs: int = 256,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Endless packed batches ``[batch_size, d + 2]``, shuffled within buffers.

    Each epoch walks the sequences in a new random order; rows of
    ``buffer_seqs`` sequences are shuffled together.  The order depends on
    ``seed`` only, so two SAEs trained with the same seed see the same data.
    """
    generator = torch.Generator().manual_seed(seed)
    leftover = None
    while True:
        order = torch.randperm(len(tokens), generator=generator)
        for start in range(0, len(order), buffer_seqs):
            chunk = tokens[order[start : start + buffer_seqs]]
            rows = packed_rows(model, hook_name, chunk)
            rows = rows[torch.randperm(len(rows), generator=generator)]
            if leftover is not None:
                rows = torch.cat([leftover, rows])
            n_full = len(rows) // batch_size * batch_size
            yield from rows[:n_full].split(batch_size)
            leftover = rows[n_full:]
