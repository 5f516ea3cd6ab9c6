"""``decompose``: each base latent as a sparse combination of meta-latents.

Every unit-normalised decoder row ``d_i`` of the base SAE is encoded by the
meta-SAE: ``d_i ~ b_dec + sum_j a_ij m_j`` with few non-zero ``a_ij``.  The
tables list, per base latent, its meta-latents and weights ``a_ij`` with the
reconstruction cosine, and per meta-latent its member base latents ranked
by weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .meta_sae import decoder_rows, latent_ids

if TYPE_CHECKING:
    from sae_lens import SAE

CHUNK_ROWS = 4096


@dataclass
class MetaDecomposition:
    """The decomposition tables and their summary numbers.

    - ``base_latents``: one row per base latent: ``meta_latents`` and
      ``weights`` (lists, largest weight first), ``n_meta_latents``,
      ``reconstruction_cosine``, ``squared_error``.
    - ``meta_latents``: one row per meta-latent: ``members`` and
      ``member_weights`` (lists, ranked by weight), ``n_members``,
      ``top_member``.
    - ``memberships``: the same pairs in long form (``base_latent``,
      ``meta_latent``, ``weight``, ``rank_in_meta_latent``).
    - ``metrics``: fraction of variance explained, mean active meta-latents
      per base latent, dead meta-latents and cosine summaries.
    """

    base_latents: pd.DataFrame
    meta_latents: pd.DataFrame
    memberships: pd.DataFrame
    metrics: dict = field(default_factory=dict)


def decompose(
    sae: SAE, meta_sae: SAE, latents: torch.Tensor | None = None
) -> MetaDecomposition:
    """Describe the latents of ``sae`` by the meta-latents of ``meta_sae``.

    ``latents`` (base latent ids) restricts the tables and metrics to those
    latents, e.g. the ones the meta-SAE was trained on; None takes all.
    """
    rows = decoder_rows(sae, latents)
    ids = latent_ids(int(sae.W_dec.shape[0]), latents)
    if int(meta_sae.cfg.d_in) != rows.shape[1]:
        raise ValueError(
            f"the meta-SAE reads {meta_sae.cfg.d_in}-dimensional inputs but the base "
            f"SAE's decoder rows have d_in={rows.shape[1]}; pass the meta-SAE "
            "trained on this SAE's decoder"
        )
    base_index, meta_index, weights, cosines, errors = [], [], [], [], []
    with torch.no_grad():
        for start in range(0, rows.shape[0], CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            acts = meta_sae.encode(chunk.to(meta_sae.W_dec.dtype)).float()
            recon = meta_sae.decode(acts.to(meta_sae.W_dec.dtype)).float()
            local, meta = torch.nonzero(acts, as_tuple=True)
            base_index.append(ids[local + start])
            meta_index.append(meta)
            weights.append(acts[local, meta])
            cosines.append(torch.nn.functional.cosine_similarity(chunk, recon, dim=1))
            errors.append((chunk - recon).pow(2).sum(1))
    pairs = pd.DataFrame(
        {
            "base_latent": torch.cat(base_index).numpy(),
            "meta_latent": torch.cat(meta_index).numpy(),
            "weight": torch.cat(weights).numpy(),
        }
    )
    cosine = torch.cat(cosines)
    squared_error = torch.cat(errors)
    total_variance = float((rows - rows.mean(0)).pow(2).sum())
    return MetaDecomposition(
        base_latents=base_table(pairs, ids, cosine, squared_error),
        meta_latents=meta_table(pairs, int(meta_sae.cfg.d_sae)),
        memberships=ranked_pairs(pairs),
        metrics=summary_metrics(
            pairs,
            cosine,
            squared_error,
            total_variance,
            d_meta=int(meta_sae.cfg.d_sae),
            d_sae=int(sae.W_dec.shape[0]),
        ),
    )


def ranked_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Long-form pairs, each meta-latent's members ranked by weight (0 = top)."""
    ordered = pairs.sort_values(
        ["meta_latent", "weight"], ascending=[True, False], kind="stable"
    ).reset_index(drop=True)
    ordered["rank_in_meta_latent"] = ordered.groupby("meta_latent").cumcount()
    return ordered


def base_table(
    pairs: pd.DataFrame,
    ids: torch.Tensor,
    cosine: torch.Tensor,
    squared_error: torch.Tensor,
) -> pd.DataFrame:
    """One row per base latent (``ids``): its meta-latents, largest weight first."""
    ordered = pairs.sort_values(
        ["base_latent", "weight"], ascending=[True, False], kind="stable"
    )
    grouped = ordered.groupby("base_latent")
    table = pd.DataFrame({"base_latent": ids.numpy()})
    lists = grouped.agg(meta_latents=("meta_latent", list), weights=("weight", list))
    table = table.join(lists, on="base_latent")
    for column in ("meta_latents", "weights"):
        table[column] = [v if isinstance(v, list) else [] for v in table[column]]
    table["n_meta_latents"] = table["meta_latents"].map(len)
    table["reconstruction_cosine"] = cosine.numpy()
    table["squared_error"] = squared_error.numpy()
    return table


def meta_table(pairs: pd.DataFrame, d_meta: int) -> pd.DataFrame:
    """One row per meta-latent: its member base latents ranked by weight."""
    ordered = ranked_pairs(pairs)
    grouped = ordered.groupby("meta_latent")
    lists = grouped.agg(members=("base_latent", list), member_weights=("weight", list))
    table = pd.DataFrame({"meta_latent": range(d_meta)}).join(lists, on="meta_latent")
    for column in ("members", "member_weights"):
        table[column] = [v if isinstance(v, list) else [] for v in table[column]]
    table["n_members"] = table["members"].map(len)
    table["top_member"] = [m[0] if m else -1 for m in table["members"]]
    return table[
        ["meta_latent", "n_members", "top_member", "members", "member_weights"]
    ]


def summary_metrics(
    pairs: pd.DataFrame,
    cosine: torch.Tensor,
    squared_error: torch.Tensor,
    total_variance: float,
    *,
    d_meta: int,
    d_sae: int,
) -> dict:
    """Fraction of variance explained, activity and cosine summaries.

    Everything is over the decomposed latents (``base_latents_used`` of the
    base SAE's ``d_sae``).
    """
    n = len(cosine)
    fvu = float(squared_error.sum()) / total_variance if total_variance > 0 else 0.0
    used = pairs["meta_latent"].nunique()
    return {
        "fraction_variance_explained": 1.0 - fvu,
        "mean_active_meta_latents": len(pairs) / n,
        "dead_meta_latents": d_meta - used,
        "mean_reconstruction_cosine": float(cosine.mean()),
        "median_reconstruction_cosine": float(cosine.median()),
        "fvu": fvu,
        "base_latents_without_meta_latent": int(n - pairs["base_latent"].nunique()),
        "d_meta": d_meta,
        "d_sae": d_sae,
        "base_latents_used": n,
    }
