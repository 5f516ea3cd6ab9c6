"""Encoder-vs-decoder discrepancy (Pearce's diagnostic), streamed.

For every latent ``i`` the accumulator keeps two running top-N lists of
(value, global row id): by encoder activation ``a_i(x)`` (rows where the
latent fires) and by projection ``(x - b_dec) . d_i`` on the unit decoder
direction.  It also keeps, for every row that is currently in some list,
that row's largest latent activations and a few tokens of context (see
:mod:`.row_store`).  Memory is ``O(d_sae x N x (codes_per_row +
context_tokens))`` whatever the number of tokens.

At the end, the decoder list of each latent is split into rows the encoder
list also holds and *decoder-only* rows.  On every decoder row the
absorption of ``d_i`` is scored with the latent's own decoder direction as
the probe (:func:`.scoring.absorption_scores`): latent ``i`` is the main
latent, and the other active latents contribute ``a_j W_dec[j] . d_i``.
Contributions and projections are those of SAE-Lens's decode
(:func:`sae_lens_ext.code_map`): a latent's row is ``W_dec[j] / |W_dec[j]|``
when ``rescale_acts_by_decoder_norm`` is on, the output normalisation's
per-row scale multiplies every contribution, and the projection is of
``x - decode(0)`` (``x - b_dec`` without normalisation).
A latent's absorption score is the mean absorption fraction over its
decoder list; latents that fire on decoder-only rows are its absorbers.

The lists, the row store and the scoring live on the SAE's device (that of
the activations); only the finished tables are brought to the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from sae_lens_ext import UnsupportedSAEError, code_map, require_reconstruction

from .config import AbsorptionConfig
from .row_store import RowStore, StoredRows, lookup
from .scoring import absorption_scores
from .topk import StreamingTopK, entries_above, flat_nonzero, take

_CHUNK = 1024
_COS_TABLE_ENTRIES = 2**24
N_ABSORBERS = 5
N_EXAMPLES = 3


@dataclass
class DiscrepancyResult:
    """Per-latent overlap and absorption, absorbers, top lists and examples."""

    latents: pd.DataFrame
    absorbers: pd.DataFrame
    suspects: pd.DataFrame
    tensors: dict[str, torch.Tensor]
    n_rows: int

    def metrics(self, flag_threshold: float) -> dict[str, float]:
        """Headline numbers over latents that fired at least ``top_n`` times
        (for rarer ones the encoder list is not full and the comparison says
        little; they are counted as ``rare_latents``)."""
        alive = self.latents[~self.latents["dead"]]
        scored = alive[~alive["rare"]]
        return {
            "n_rows": self.n_rows,
            "alive_latents": int(len(alive)),
            "rare_latents": int(alive["rare"].sum()),
            "mean_overlap": float(scored["overlap"].mean()),
            "low_overlap_fraction": float((scored["overlap"] < 0.5).mean()),
            "mean_absorption_score": float(scored["absorption_score"].mean()),
            "suspected_latents": int(
                (scored["absorption_score"] >= flag_threshold).sum()
            ),
        }


class DiscrepancyAccumulator:
    """Streams batches into the two top-N lists and the row store."""

    def __init__(self, sae, config: AbsorptionConfig):
        self.config = config
        self.code_map = decoder_code_map(sae)
        w_dec = sae.W_dec.detach().float()
        self.device = w_dec.device
        # what one unit of each latent adds to the reconstruction, in length
        self.dec_norm = self.code_map.row_norms.float().to(self.device)
        self.unit_dec = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.dtype = getattr(torch, config.dtype)
        self.projector = self.unit_dec.to(self.dtype)
        d_sae = w_dec.shape[0]
        self.encoder = StreamingTopK(d_sae, config.top_n, self.device)
        self.decoder = StreamingTopK(d_sae, config.top_n, self.device)
        self.store = RowStore(config.codes_per_row, config.context_tokens, self.device)
        self.fire_count = torch.zeros(d_sae, dtype=torch.long, device=self.device)
        self.n_rows = 0

    def update(self, batch) -> None:
        """Merge one :class:`~sae_lens_ext.ActivationBatch` (or any object with
        ``sae_in``, ``feature_acts``, ``offset`` and optional token fields)."""
        offset = batch.offset
        sae_in = batch.sae_in.detach().to(self.device)
        x = sae_in.float() - self.code_map.zero_code(sae_in).float()  # x - decode(0)
        # [d_sae, rows]: a latent's projections are contiguous (the product is
        # also ~15% faster in this layout)
        projections = (self.projector @ x.to(self.dtype).T).float()
        acts = batch.feature_acts.detach().float().to(self.device)
        rows, cols = entries_above(acts, 0.0)  # one pass over the codes
        values = take(acts, rows, cols)
        # the decoder list and the row store keep each activation times its
        # row's output scale (what its contribution is made of); the encoder
        # list ranks the activations themselves
        lengths, length_values = acts, values
        scale = self.code_map.row_scale(sae_in)
        if scale is not None:
            scale = scale.float()
            lengths, length_values = acts * scale[:, None], values * scale[rows]
        self.decoder.update_dense(projections, offset, payload=lengths.T)
        self.fire_count += torch.bincount(cols, minlength=len(self.fire_count))
        self.encoder.update_entries(cols, values, rows + offset)
        self.n_rows += acts.shape[0]
        entered = torch.cat(
            [
                self.decoder.ids[self.decoder.ids >= offset],
                self.encoder.ids[self.encoder.ids >= offset],
            ]
        ).unique()
        local = entered - offset
        slot_of_row = torch.full(
            (acts.shape[0],), -1, dtype=torch.long, device=self.device
        )
        slot_of_row[local] = torch.arange(len(local), device=self.device)
        positions = getattr(batch, "positions", None)
        self.store.add_entries(
            entered,
            slot_of_row.index_select(0, rows),
            cols,
            length_values,
            getattr(batch, "token_context", None),
            positions.to(self.device)[local] if positions is not None else None,
        )
        self.store.maybe_prune(self._live_ids)

    def _live_ids(self) -> torch.Tensor:
        return torch.cat([self.decoder.live_ids(), self.encoder.live_ids()]).unique()

    def result(self, decode=None) -> DiscrepancyResult:
        """Score every latent; ``decode(token_ids) -> str`` renders contexts."""
        if self.n_rows == 0:
            raise ValueError(
                "the absorption diagnostic saw no rows; give it activations "
                "(a non-empty dataset or tensor)"
            )
        rows = self.store.rows()
        scored = {key: value.cpu() for key, value in self._score(rows).items()}
        rows = rows.to("cpu")
        latents = self._latent_table(scored)
        absorbers = self._absorber_table(scored)
        suspects = self._suspect_table(latents, absorbers, scored, rows, decode)
        tensors = {
            "overlap": torch.tensor(latents["overlap"].to_numpy()).float(),
            "absorption_score": torch.tensor(
                latents["absorption_score"].to_numpy()
            ).float(),
            "encoder_top_ids": self.encoder.ids,
            "encoder_top_values": self.encoder.values,
            "decoder_top_ids": self.decoder.ids,
            "decoder_top_projections": self.decoder.values,
        }
        return DiscrepancyResult(latents, absorbers, suspects, tensors, self.n_rows)

    def _score(self, rows: StoredRows) -> dict[str, torch.Tensor]:
        """Absorption of each latent's decoder direction on its decoder rows."""
        d_sae = self.decoder.ids.shape[0]
        # the [d_sae, chunk] cosine table stays under ~64 MB
        step = max(16, min(_CHUNK, _COS_TABLE_ENTRIES // d_sae))
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, d_sae, step):
            chunk = torch.arange(start, min(start + step, d_sae), device=self.device)
            for key, value in self._score_chunk(chunk, rows).items():
                parts.setdefault(key, []).append(value)
        return {key: torch.cat(values) for key, values in parts.items()}

    def _score_chunk(self, chunk: torch.Tensor, rows: StoredRows) -> dict:
        ids = self.decoder.ids[chunk]  # [c, N]
        projection = self.decoder.values[chunk]
        valid = ids >= 0
        where, found = lookup(rows, ids.clamp_min(0))
        valid &= found
        in_encoder = (ids[:, :, None] == self.encoder.ids[chunk][:, None, :]).any(-1)
        in_encoder &= valid
        latents = rows.code_latents[where].long()  # [c, N, m]
        values = rows.code_values[where]
        other = (latents >= 0) & (latents != chunk[:, None, None])
        own_act = self.decoder.payload[chunk]
        cos_table = self.unit_dec @ self.unit_dec[chunk].T  # [d_sae, c]
        safe = latents.clamp_min(0)
        cosines = cos_table.T.gather(1, safe.flatten(1)).view_as(values)
        cosines = torch.where(other, cosines, 0.0)
        contributions = torch.where(other, values * self.dec_norm[safe] * cosines, 0.0)
        c, n_top, m = values.shape
        scores = absorption_scores(
            projection.reshape(-1),
            (own_act * self.dec_norm[chunk][:, None]).reshape(-1),
            (own_act > 0).reshape(-1),
            contributions.reshape(c * n_top, m),
            cosines.reshape(c * n_top, m),
            share_threshold=self.config.share_threshold,
            cos_threshold=self.config.absorber_cos_threshold,
        )
        fraction = torch.where(valid, scores.fraction.view(c, n_top), 0.0)
        full = scores.full.view(c, n_top) & valid
        top_slot = scores.top_slot.view(c, n_top).clamp_min(0)
        top_latent = latents.gather(2, top_slot[..., None])[..., 0]
        top_latent = torch.where(fraction > 0, top_latent, -1)
        share = torch.where(other & valid[..., None], contributions, 0.0)
        share = share / projection.clamp_min(1e-12)[..., None]
        return {
            "valid": valid,
            "in_encoder": in_encoder,
            "fraction": fraction,
            "full": full,
            "top_latent": top_latent,
            "own_act": own_act,
            "code_latents": torch.where(other, latents, -1),
            "code_shares": share,
            "code_cosines": cosines,
            "row_ids": ids,
            "projection": projection,
        }

    def _latent_table(self, scored: dict) -> pd.DataFrame:
        valid, in_encoder = scored["valid"], scored["in_encoder"]
        n_valid = valid.sum(1).clamp_min(1).float()
        top_absorber, top_cos = _most_common_absorber(
            scored["top_latent"], self.unit_dec.cpu()
        )
        fire_count = self.fire_count.cpu()
        return pd.DataFrame(
            {
                "latent": range(valid.shape[0]),
                "firing_frequency": (fire_count.float() / self.n_rows).numpy(),
                "fires": fire_count.numpy(),
                "dead": (fire_count == 0).numpy(),
                "rare": (fire_count < self.config.top_n).numpy(),
                "overlap": (in_encoder.sum(1) / n_valid).numpy(),
                "decoder_only_rows": (valid & ~in_encoder).sum(1).numpy(),
                "fires_on_decoder_top": (
                    (valid & (scored["own_act"] > 0)).sum(1) / n_valid
                ).numpy(),
                "absorption_score": (scored["fraction"].sum(1) / n_valid).numpy(),
                "full_absorption_rate": (scored["full"].sum(1) / n_valid).numpy(),
                "top_absorber": top_absorber.numpy(),
                "top_absorber_cos": top_cos.numpy(),
                "max_activation": self.encoder.values[:, 0].clamp_min(0).cpu().numpy(),
                "max_projection": self.decoder.values[:, 0].cpu().numpy(),
            }
        )

    def _absorber_table(self, scored: dict) -> pd.DataFrame:
        """For each latent, the latents firing on its decoder-only rows."""
        decoder_only = scored["valid"] & ~scored["in_encoder"]  # [d, N]
        latents = scored["code_latents"]  # [d, N, m]
        # flat positions of the (latent, row, code) entries to count
        width = latents.shape[1] * latents.shape[2]
        flat = flat_nonzero(decoder_only[..., None] & (latents >= 0))
        pairs_owner = flat // width
        pairs_other, shares, cosines = (
            scored[key].reshape(-1).index_select(0, flat)
            for key in ("code_latents", "code_shares", "code_cosines")
        )
        top = scored["top_latent"].reshape(-1).index_select(0, flat // latents.shape[2])
        is_top = top == pairs_other
        columns = [
            "latent",
            "absorber",
            "rows_fired",
            "fire_fraction",
            "rows_top_absorber",
            "mean_share",
            "decoder_cos",
        ]
        if pairs_owner.numel() == 0:
            return pd.DataFrame(columns=columns)
        d_sae = latents.shape[0]
        keys, inverse, counts = torch.unique(
            pairs_owner * d_sae + pairs_other, return_inverse=True, return_counts=True
        )
        share_sum = torch.zeros(len(keys)).index_add_(0, inverse, shares)
        top_count = torch.zeros(len(keys)).index_add_(0, inverse, is_top.float())
        cos = torch.zeros(len(keys)).index_put_((inverse,), cosines)
        owner_of_key = keys // d_sae
        n_only = decoder_only.sum(1)[owner_of_key].clamp_min(1)
        table = pd.DataFrame(
            {
                "latent": owner_of_key.numpy(),
                "absorber": (keys % d_sae).numpy(),
                "rows_fired": counts.numpy(),
                "fire_fraction": (counts / n_only).numpy(),
                "rows_top_absorber": top_count.long().numpy(),
                "mean_share": (share_sum / counts).numpy(),
                "decoder_cos": cos.numpy(),
            }
        )
        table = table.sort_values(
            ["latent", "rows_top_absorber", "rows_fired", "mean_share"],
            ascending=[True, False, False, False],
        )
        return table.groupby("latent").head(N_ABSORBERS).reset_index(drop=True)

    def _suspect_table(self, latents, absorbers, scored, rows, decode) -> pd.DataFrame:
        alive = latents[~latents["dead"] & ~latents["rare"]]
        ranked = alive.sort_values(
            ["absorption_score", "full_absorption_rate"], ascending=False
        )
        ranked = ranked[ranked["absorption_score"] > 0].head(self.config.n_suspects)
        records = []
        for rank, row in enumerate(ranked.itertuples(), start=1):
            latent = int(row.latent)
            mine = absorbers[absorbers["latent"] == latent].head(3)
            records.append(
                {
                    "rank": rank,
                    "latent": latent,
                    "absorption_score": row.absorption_score,
                    "full_absorption_rate": row.full_absorption_rate,
                    "overlap": row.overlap,
                    "firing_frequency": row.firing_frequency,
                    "suspected": row.absorption_score >= self.config.flag_threshold,
                    "absorbers": mine["absorber"].astype(int).tolist(),
                    "absorber_cos": mine["decoder_cos"].round(3).tolist(),
                    "absorber_fire_fraction": mine["fire_fraction"].round(3).tolist(),
                    **self._examples(latent, scored, rows, decode),
                }
            )
        return pd.DataFrame(records)

    def _examples(self, latent: int, scored, rows: StoredRows, decode) -> dict:
        """Contexts of the latent's absorbed rows and of its top activations."""
        fraction = scored["fraction"][latent]
        absorbed = (fraction > 0).nonzero()[:, 0][:N_EXAMPLES]
        absorbed_ids = scored["row_ids"][latent][absorbed]
        absorbers = scored["top_latent"][latent][absorbed]
        encoder_ids = self.encoder.ids[latent].cpu()
        encoder_ids = encoder_ids[encoder_ids >= 0][:N_EXAMPLES]
        return {
            "absorbed_examples": " | ".join(
                f"{_render(rows, i, decode)} (by {int(j)})"
                for i, j in zip(absorbed_ids.tolist(), absorbers.tolist(), strict=True)
            ),
            "encoder_examples": " | ".join(
                _render(rows, i, decode) for i in encoder_ids.tolist()
            ),
        }


def decoder_code_map(sae):
    """:func:`sae_lens_ext.code_map` of ``sae``, or a clear error if it has none."""
    require_reconstruction(sae, "absorption")
    found = code_map(sae)
    if found is None:
        raise UnsupportedSAEError(
            f"absorption does not support SAE-Lens architecture "
            f"{sae.cfg.architecture()!r} with normalize_activations="
            f"{sae.cfg.normalize_activations!r}: latents' contributions need a "
            "decoder that is linear in the code. Leave it out with `-p no:absorption`."
        )
    return found


def _render(rows: StoredRows, row_id: int, decode) -> str:
    """A row's context as text with its own token in [[ ]], or its id."""
    where, found = lookup(rows, torch.tensor([row_id]))
    if decode is None or not bool(found[0]):
        return f"row {row_id}"
    tokens = rows.contexts[where[0]]
    tokens = tokens[tokens >= 0].tolist()
    if not tokens:
        return f"row {row_id}"
    text = decode(tokens[:-1]) + "[[" + decode(tokens[-1:]) + "]]"
    return text.replace("\n", "\u23ce")


def _most_common_absorber(top_latent: torch.Tensor, unit_dec: torch.Tensor):
    """Per latent, the latent most often carrying its absorbed rows (-1: none)."""
    d_sae = top_latent.shape[0]
    owner = torch.arange(d_sae)[:, None].expand_as(top_latent)
    mask = top_latent >= 0
    best = torch.full((d_sae,), -1, dtype=torch.long)
    cos = torch.full((d_sae,), float("nan"))
    if mask.any():
        pairs = pd.DataFrame(
            {"owner": owner[mask].numpy(), "absorber": top_latent[mask].numpy()}
        )
        counts = pairs.value_counts().reset_index(name="n")
        counts = counts.sort_values(["owner", "n"], ascending=[True, False])
        first = counts.groupby("owner").head(1)
        best[torch.tensor(first["owner"].to_numpy())] = torch.tensor(
            first["absorber"].to_numpy()
        )
        valid = best >= 0
        cos[valid] = (unit_dec[valid] * unit_dec[best[valid]]).sum(1)
    return best, cos
