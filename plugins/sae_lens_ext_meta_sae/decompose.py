"""``decompose``: each base latent as a sparse combination of meta-latents.

Every unit-normalised decoder row ``d_i`` of the base SAE is encoded by the
meta-SAE: ``d_i ~ b_dec + sum_j a_ij m_j`` with few non-zero ``a_ij``.  The
tables list, per base latent, its meta-latents and weights ``a_ij`` with the
reconstruction cosine, and per meta-latent its member base latents ranked
by weight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .config import MetaSAEConfig
from .meta_sae import decoder_rows, latent_ids, to_sae_lens
from .null import NullBaseline, null_baseline
from .trainer import TrainingLog

if TYPE_CHECKING:
    from sae_lens import SAE

CHUNK_ROWS = 4096
NEAREST_SHOWN = 5


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
      per base latent, dead meta-latents and cosine summaries, and the null
      baseline's FVE, the FVE above it and whether that is above chance.
    - ``null``: the null baseline (None when it was not trained).

    ``meta_latents`` also lists each meta-latent's ``nearest_base_latents``
    by decoder cosine (``nearest_base_cosines``); ``base_latents`` has a
    ``firing_frequency`` column when frequencies were given.
    """

    base_latents: pd.DataFrame
    meta_latents: pd.DataFrame
    memberships: pd.DataFrame
    metrics: dict = field(default_factory=dict)
    null: NullBaseline | None = None


def decompose(
    sae: SAE,
    meta_sae: SAE,
    latents: torch.Tensor | None = None,
    *,
    firing_frequency: torch.Tensor | None = None,
    null_seeds: int | None = None,
    null_margin: float | None = None,
) -> MetaDecomposition:
    """Describe the latents of ``sae`` by the meta-latents of ``meta_sae``.

    ``latents`` (base latent ids) restricts the tables and metrics to those
    latents, e.g. the ones the meta-SAE was trained on; None takes all.
    ``firing_frequency`` ``[d_sae]`` (share of tokens each base latent fires
    on) adds a column and a frequency-weighted FVE.  The null baseline
    (:mod:`.null`) retrains the meta-SAE's recorded training config on
    ``null_seeds`` random decoders (default: the recorded ``null_seeds``;
    0 skips it).
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
    for start, chunk, acts, recon in encoded_chunks(meta_sae, rows):
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
    frequency = (
        None
        if firing_frequency is None
        else torch.as_tensor(firing_frequency, dtype=torch.float64)[ids]
    )
    base = base_table(pairs, ids, cosine, squared_error)
    meta = meta_table(pairs, int(meta_sae.cfg.d_sae))
    nearest, nearest_cos = nearest_base_latents(meta_sae, rows, ids)
    meta["nearest_base_latents"] = nearest
    meta["nearest_base_cosines"] = nearest_cos
    metrics = summary_metrics(
        pairs,
        cosine,
        squared_error,
        total_variance,
        d_meta=int(meta_sae.cfg.d_sae),
        d_sae=int(sae.W_dec.shape[0]),
    )
    if frequency is not None:
        base["firing_frequency"] = frequency.numpy()
        metrics["frequency_weighted_fve"] = weighted_fve(rows, squared_error, frequency)
    null = meta_null(sae, meta_sae, rows, ids, frequency, null_seeds, null_margin)
    if null is not None:  # next to the FVE, so summaries show them together
        fve = metrics.pop("fraction_variance_explained")
        metrics = {"fraction_variance_explained": fve, **null.metrics(fve), **metrics}
    return MetaDecomposition(
        base_latents=base,
        meta_latents=meta,
        memberships=ranked_pairs(pairs),
        metrics=metrics,
        null=null,
    )


def encoded_chunks(meta_sae: SAE, rows: torch.Tensor):
    """``(start, rows, activations, reconstruction)`` per chunk of rows."""
    dtype = meta_sae.W_dec.dtype
    with torch.no_grad():
        for start in range(0, rows.shape[0], CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            acts = meta_sae.encode(chunk.to(dtype)).float()
            recon = meta_sae.decode(acts.to(dtype)).float()
            yield start, chunk, acts, recon


def fraction_variance_explained(meta_sae: SAE, rows: torch.Tensor) -> float:
    """1 - sum of squared errors / total variance of ``rows``, as in ``decompose``."""
    error = sum(
        float((chunk - recon).pow(2).sum())
        for _, chunk, _, recon in encoded_chunks(meta_sae, rows)
    )
    total = float((rows - rows.mean(0)).pow(2).sum())
    return 1.0 - error / total if total > 0 else 1.0


def weighted_fve(
    rows: torch.Tensor, squared_error: torch.Tensor, frequency: torch.Tensor
) -> float:
    """FVE with each row weighted by its latent's firing frequency."""
    weight = frequency.double()
    if not weight.sum() > 0:
        return float("nan")
    weight = weight / weight.sum()
    centre = (weight[:, None] * rows.double()).sum(0)
    total = float((weight * (rows.double() - centre).pow(2).sum(1)).sum())
    error = float((weight * squared_error.double()).sum())
    return 1.0 - error / total if total > 0 else float("nan")


def nearest_base_latents(
    meta_sae: SAE, rows: torch.Tensor, ids: torch.Tensor, n: int = NEAREST_SHOWN
) -> tuple[list[list[int]], list[list[float]]]:
    """Per meta-latent, the base latents whose unit decoder rows are closest."""
    directions = meta_sae.W_dec.detach().float().cpu()
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = min(n, rows.shape[0])
    latents, cosines = [], []
    for start in range(0, directions.shape[0], CHUNK_ROWS):
        similarity = directions[start : start + CHUNK_ROWS] @ rows.T
        top = similarity.topk(n, dim=1)
        latents += ids[top.indices].tolist()
        cosines += top.values.tolist()
    return latents, cosines


def training_config(meta_sae: SAE) -> MetaSAEConfig | None:
    """The :class:`MetaSAEConfig` recorded in a meta-SAE's metadata, if any."""
    recorded = getattr(meta_sae.cfg.metadata, "meta_sae_training", None)
    if not recorded:
        return None
    names = {f.name for f in dataclasses.fields(MetaSAEConfig)}
    return MetaSAEConfig(**{k: v for k, v in dict(recorded).items() if k in names})


def meta_null(
    sae, meta_sae, rows, ids, frequency, seeds, margin
) -> NullBaseline | None:
    """The null baseline for this meta-SAE, or None when it cannot be trained.

    The training options come from the meta-SAE's metadata; a meta-SAE
    trained elsewhere has none, and ``null_seeds=0`` turns the null off.
    """
    config = training_config(meta_sae)
    if config is None:
        return None
    seeds = config.null_seeds if seeds is None else seeds
    if seeds == 0:
        return None
    weights = None
    if config.sampling == "frequency":
        if frequency is None:
            raise ValueError(
                "this meta-SAE was trained with frequency-weighted sampling, so "
                "its null needs the same weights: pass firing_frequency"
            )
        weights = frequency

    def fve_of(trained, random_rows):
        log = TrainingLog(rows=random_rows.shape[0])
        null_sae = to_sae_lens(
            trained, base=sae, config=config, log=log, release=None, sae_id=None
        )
        return fraction_variance_explained(null_sae, random_rows)

    return null_baseline(
        rows.shape[0],
        rows.shape[1],
        dataclasses.replace(config, d_meta=int(meta_sae.cfg.d_sae)),
        fve_of,
        seeds=seeds,
        margin=config.null_margin if margin is None else margin,
        row_weights=weights,
        device=sae.W_dec.device,
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
