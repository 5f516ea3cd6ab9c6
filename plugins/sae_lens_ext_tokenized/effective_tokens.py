"""Effective tokens: which upstream latents the upstream table leans on, and
whether they are multi-token units.

For an SAE with an upstream-SAE table ``U``, each upstream latent ``j`` adds
``g_j U[j]`` to the reconstruction.  Its *weight* is the typical size of that
vector where the latent fires, ``mean(g_j | g_j > 0) * |U[j]|``.  For the
latents of largest weight this reports the token contexts where they fire and
the shortest n-gram (current token; previous + current; two previous +
current) that explains them:

- ``coverage_n``: the share of the latent's firings on its most frequent
  n-gram;
- ``precision_n``: the share of that n-gram's occurrences on which it fires.

A latent is a ``unit`` of length n when, for the smallest such n, both are at
least ``threshold`` (0.5): ``"token"`` (n=1), ``"bigram"``, ``"trigram"``, or
``"context"`` (no short n-gram explains it).  The same classification of every
upstream latent that fires often enough is the null baseline the top latents
are compared with.
"""

from __future__ import annotations

import pandas as pd
import torch

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


def ngram_stats(fired: torch.Tensor, grams: torch.Tensor, n: int) -> tuple:
    """(top n-gram, coverage, precision) of the rows in ``fired`` [bool, n_rows]."""
    keys = grams[:, 3 - n :]
    firing_keys, counts = torch.unique(keys[fired], dim=0, return_counts=True)
    best = int(counts.argmax())
    top = firing_keys[best]
    occurrences = int((keys == top).all(dim=1).sum())
    coverage = counts[best].item() / int(fired.sum())
    return top.tolist(), coverage, counts[best].item() / occurrences


def classify(coverages: list[float], precisions: list[float], threshold: float):
    """The unit of the smallest n-gram with coverage and precision >= threshold."""
    for n, (coverage, precision) in enumerate(
        zip(coverages, precisions, strict=True), start=1
    ):
        if coverage >= threshold and precision >= threshold:
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
    examples: int = 3,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-latent table of the ``top`` latents by weight, unit counts).

    The counts compare the top latents with every latent that fires at least
    ``min_firings`` times (the null baseline).
    """
    codes, grams = upstream_firings(sae, model, tokens)
    table = sae.W_upstream_lookup.detach().float().cpu()
    fired_mask = codes > 0
    firings = fired_mask.sum(0)
    mean_act = codes.sum(0) / firings.clamp_min(1)
    weight = mean_act * table.norm(dim=1)
    decoder = sae.upstream_sae.W_dec.detach().float().cpu()
    cosine = torch.nn.functional.cosine_similarity(table, decoder, dim=1)
    eligible = (firings >= min_firings).nonzero().flatten()
    rows = []
    for j in eligible.tolist():
        fired = fired_mask[:, j]
        stats = [ngram_stats(fired, grams, n) for n in (1, 2, 3)]
        coverages = [s[1] for s in stats]
        precisions = [s[2] for s in stats]
        rows.append(
            {
                "latent": j,
                "firings": int(firings[j]),
                "weight": float(weight[j]),
                "table_norm": float(table[j].norm()),
                "cos_upstream_decoder": float(cosine[j]),
                "unit": classify(coverages, precisions, threshold),
                **{f"coverage_{n}": c for n, c in enumerate(coverages, 1)},
                **{f"precision_{n}": p for n, p in enumerate(precisions, 1)},
                "top_trigram": stats[2][0],
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
    """``contexts`` and ``top_trigram`` as text, ``[cur]`` marked."""

    def text(ids):
        words = [tokenizer.decode([i]) if i >= 0 else "<start>" for i in ids]
        return " ".join(words[:-1]) + f" [{words[-1]}]"

    decoded = table.copy()
    decoded["contexts"] = [" | ".join(text(c) for c in cs) for cs in table.contexts]
    decoded["top_trigram"] = [text(t) for t in table.top_trigram]
    return decoded
