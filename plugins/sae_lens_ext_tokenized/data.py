"""Activation rows with their token keys, from a model and token sequences."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from sae_lens_ext.shared_pass import check_activations, stop_layer
from sae_lens_ext.tokens import load_token_file

from .keys import pack_tokens


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
    model,
    hook_name: str,
    tokens: torch.Tensor,
    batch_seqs: int = 32,
    upstream_hook: str | None = None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield ``(acts [n, d], tokens [n], prev_tokens [n])`` per batch of sequences.

    With ``upstream_hook`` each tuple also holds that hook's activations at
    the same positions, from the same forward pass.  Position 0 (BOS) is
    skipped, as in the host's shared pass.
    """
    hooks = [hook_name] + ([upstream_hook] if upstream_hook else [])
    stop = max((stop_layer(h) or model.cfg.n_layers for h in hooks), default=None)
    for start in range(0, len(tokens), batch_seqs):
        part = tokens[start : start + batch_seqs].to(model.cfg.device)
        with torch.no_grad():
            _, cache = model.run_with_cache(
                part,
                names_filter=hooks,
                stop_at_layer=None if stop >= model.cfg.n_layers else stop,
            )
        body = part[:, 1:].reshape(-1).cpu()
        prev = part[:, :-1].reshape(-1).cpu()
        rows = [cache[h][:, 1:].reshape(len(body), -1).float().cpu() for h in hooks]
        for hook, acts in zip(hooks, rows, strict=True):
            check_activations(acts, acts.shape[-1], hook)
        yield (rows[0], body, prev, *rows[1:])


def packed_rows(
    model, hook_name: str, tokens: torch.Tensor, upstream_hook: str | None = None
) -> torch.Tensor:
    """All activation rows of ``tokens`` packed with their keys ``[n, d + 2 (+ d_up)]``."""
    return torch.cat(
        [
            pack_tokens(*row)
            for row in activation_rows(
                model, hook_name, tokens, upstream_hook=upstream_hook
            )
        ]
    )


def shuffled_batches(
    model,
    hook_name: str,
    tokens: torch.Tensor,
    batch_size: int,
    *,
    buffer_seqs: int = 256,
    seed: int = 0,
    upstream_hook: str | None = None,
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
            rows = packed_rows(model, hook_name, chunk, upstream_hook)
            rows = rows[torch.randperm(len(rows), generator=generator)]
            if leftover is not None:
                rows = torch.cat([leftover, rows])
            n_full = len(rows) // batch_size * batch_size
            yield from rows[:n_full].split(batch_size)
            leftover = rows[n_full:]
