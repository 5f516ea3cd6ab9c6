"""Effective tokens: which upstream latents the upstream table leans on, and
whether they are multi-token units.

For an SAE with an upstream-SAE table ``U``, each upstream latent ``j`` adds
``g_j U[j]`` to the reconstruction.  Its *weight* is the typical size of that
vector where the latent fires, ``mean(g_j | g_j > 0) * |U[j]|``; with the
``top1`` key, ``j`` adds ``U[j]`` where it is the most active latent, so it
counts as firing there only and its weight is ``|U[j]|``.  For the
latents of largest weight this reports the token contexts where they fire and
the shortest n-gram (current token; previous + current; two previous +
current) that determines them.  An n-gram *determines* a latent when it occurs
at least ``min_occurrences`` times and the latent fires on at least
``threshold`` of its occurrences; ``determined_n`` is the share of the
latent's firings that fall on n-grams that determine it.

A latent's ``unit`` is the smallest n with ``determined_n >= threshold``
(0.5): ``"token"`` (it fires on a fixed set of tokens), ``"bigram"`` (on
token pairs, not on their last tokens alone), ``"trigram"``, or ``"context"``
(no n-gram up to 3 tokens determines it).  The same classification of every
upstream latent that fires often enough is the null baseline the top latents
are compared with.
"""

from __future__ import annotations

import pandas as pd
import torch

from .upstream import key_weights

UNITS = {1: "token", 2: "bigram", 3: "trigram"}


@torch.no_grad()
def upstream_firings(sae, model, tokens: torch.Tensor, batch_seqs: int = 32):
    """Upstream codes ``[n, d_up]`` and the (two previous, current) token ids
    ``[n, 3]`` (-1 before a sequence start) at every non-BOS position."""
    from .keys import NO_PREVIOUS

    hook = sae.cfg.upstream_hook_name
    codes, grams = [], []
    for start in range(0, len(tokens), batch_seqs):
        part = tokens[start : start + batch_seqs].to(model.cfg.device)
        _, cache = model.run_with_cache(part, names_filter=hook)
        acts = cache[hook][:, 1:].reshape(-1, sae.cfg.upstream_d_in)
        codes.append(sae.upstream_codes(acts).float().cpu())
        padded = torch.nn.functional.pad(part.cpu(), (2, 0), value=NO_PREVIOUS)
        window = torch.stack(
            [padded[:, 1:-2], padded[:, 2:-1], padded[:, 3:]], dim=-1
        )  # (prev2, prev, cur) for positions 1..seq-1
        grams.append(window.reshape(-1, 3))
    return torch.cat(codes), torch.cat(grams)


def ngram_index(grams: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per n (1-3): each row's n-gram id and each n-gram's number of occurrences."""
    index = {}
    for n in (1, 2, 3):
        _, inverse, counts = torch.unique(
            grams[:, 3 - n :], dim=0, return_inverse=True, return_counts=True
        )
        index[n] = (inverse, counts)
    return index


def determined_share(
    fired: torch.Tensor,
    inverse: torch.Tensor,
    counts: torch.Tensor,
    threshold: float,
    min_occurrences: int,
) -> float:
    """Share of the firings (``fired`` [bool, rows]) on n-grams that determine them."""
    ids, fires = torch.unique(inverse[fired], return_counts=True)
    occurrences = counts[ids]
    determining = (occurrences >= min_occurrences) & (fires >= threshold * occurrences)
    return fires[determining].sum().item() / max(fires.sum().item(), 1)


def classify(determined: list[float], threshold: float) -> str:
    """The unit of the smallest n-gram length whose determined share >= threshold."""
    for n, share in enumerate(determined, start=1):
        if share >= threshold:
            return UNITS[n]
    return "context"


def effective_tokens(
    sae,
    model,
    tokens: torch.Tensor,
    *,
    top: int = 20,
    min_firings: int = 20,
    threshold: float = 0.5,
    min_occurrences: int = 5,
    examples: int = 3,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-latent table of the ``top`` latents by weight, unit counts).

    The counts compare the top latents with every latent that fires at least
    ``min_firings`` times (the null baseline).
    """
    codes, grams = upstream_firings(sae, model, tokens)
    row_weights = key_weights(codes, sae.cfg.upstream_key)  # what multiplies U[j]
    table = sae.W_upstream_lookup.detach().float().cpu()
    fired_mask = row_weights > 0
    codes = codes * fired_mask  # top-1 key: a latent counts where it is the key
    firings = fired_mask.sum(0)
    mean_weight = row_weights.sum(0) / firings.clamp_min(1)
    weight = mean_weight * table.norm(dim=1)
    decoder = sae.upstream_sae.W_dec.detach().float().cpu()
    cosine = torch.nn.functional.cosine_similarity(table, decoder, dim=1)
    eligible = (firings >= min_firings).nonzero().flatten()
    index = ngram_index(grams)
    rows = []
    for j in eligible.tolist():
        fired = fired_mask[:, j]
        determined = [
            determined_share(fired, *index[n], threshold, min_occurrences)
            for n in (1, 2, 3)
        ]
        tokens_fired = grams[fired, 2]
        rows.append(
            {
                "latent": j,
                "firings": int(firings[j]),
                "weight": float(weight[j]),
                "table_norm": float(table[j].norm()),
                "cos_upstream_decoder": float(cosine[j]),
                "unit": classify(determined, threshold),
                **{f"determined_{n}": d for n, d in enumerate(determined, 1)},
                "distinct_tokens": int(tokens_fired.unique().numel()),
                "contexts": top_contexts(codes[:, j], grams, examples),
            }
        )
    everything = pd.DataFrame(rows).sort_values("weight", ascending=False)
    chosen = everything.head(top)
    counts = pd.DataFrame(
        {
            f"top {len(chosen)} by weight": chosen.unit.value_counts(),
            f"all {len(everything)} latents firing >= {min_firings}": (
                everything.unit.value_counts()
            ),
        }
    ).fillna(0)
    return chosen.reset_index(drop=True), counts.astype(int)


def top_contexts(acts: torch.Tensor, grams: torch.Tensor, examples: int) -> list:
    """The (two previous, current) token ids at the latent's strongest firings."""
    order = acts.argsort(descending=True)[:examples]
    return [grams[i].tolist() for i in order.tolist() if acts[i] > 0]


def decode_contexts(table: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """``contexts`` as text: two previous tokens, then ``[current]``.

    The current token is decoded after the previous ones (see
    :func:`current_token_text`), so a word-start piece keeps its leading
    space with SentencePiece tokenizers too.
    """

    def text(ids):
        known = [i for i in ids[:-1] if i >= 0]
        start = "<start>" * (len(ids) - 1 - len(known))
        before = tokenizer.decode(known) if known else ""
        return f"{start}{before}[{current_token_text(tokenizer, known, ids[-1])}]"

    decoded = table.copy()
    decoded["contexts"] = [" | ".join(text(c) for c in cs) for cs in table.contexts]
    return decoded


def current_token_text(tokenizer, before: list[int], token: int) -> str:
    """The text ``token`` adds after the ids ``before``, its leading space included.

    ``tokenizer.decode([token])`` drops the leading space of a word-start
    piece with SentencePiece-style tokenizers (``▁upon`` decodes to ``upon``),
    which hides where words start; decoding it after a context (the token
    itself when there is none) and removing that context's text keeps it.
    """
    anchor = before or [token]
    prefix = tokenizer.decode(anchor)
    full = tokenizer.decode([*anchor, token])
    if full.startswith(prefix):
        return full[len(prefix) :]
    return tokenizer.decode([token])  # a piece that merges with its context (bytes)
