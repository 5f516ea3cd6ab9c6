"""Description length of an SAE's latent code (Ayonrinde, Pearce, Sharkey 2024).

For each candidate precision ``p`` of a ladder ``p0 * 2**j`` one streaming
pass accumulates, per latent, the histogram of its quantised activations and
the squared reconstruction error when every latent is quantised at ``p``.
Then

    DL(p) = sum_i H(q_p(a_i))          bits per token

and the chosen precision is the coarsest one such that it and every finer
one keep the loss increase over the unquantised SAE within ``tolerance``.
The ladder is placed from the activations' own scale (:mod:`.ladder`)
unless an absolute ``finest_precision`` or a fixed ``precision`` is given.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch

from sae_lens_ext import (
    at_positions,
    code_map,
    flat_rows,
    position_mask,
    require_reconstruction,
    splice,
)

from .allocation import (
    Allocation,
    allocate_precisions,
    check_affine_decode,
    decode_columns,
)
from .histograms import QuantisedHistograms, bin_midpoints
from .ladder import (
    Ladder,
    activation_scale,
    bootstrap_choices,
    choice_on_ladder,
    ladder_end_warning,
    pilot_octave,
)

#: Normalisations whose decode rescales each row by statistics of its input.
ROW_SCALED_NORMALISATIONS = ("constant_norm_rescale", "layer_norm")

NON_NEGATIVE_ARCHITECTURES = {
    "standard",
    "topk",
    "jumprelu",
    "batchtopk",
    "gated",
    "matryoshka_batchtopk",
}


@dataclass
class MDLConfig:
    """Options of the MDL analysis."""

    precision: float | None = field(
        default=None,
        metadata={"help": "fixed bin width; default: search the precision ladder"},
    )
    finest_precision: float | None = field(
        default=None,
        metadata={
            "help": "absolute finest bin width of the ladder; default: placed "
            "from the activations' scale by a pilot on the first batch"
        },
    )
    n_precisions: int = field(
        default=10, metadata={"help": "ladder length: finest * 2**j, j < n"}
    )
    coarser_octaves: int = field(
        default=3,
        metadata={
            "help": "rungs above the pilot's choice when the ladder is placed "
            "from the activations (the rest lie below it)"
        },
    )
    tolerance: float = field(
        default=0.05,
        metadata={
            "help": "allowed loss increase: relative MSE (loss=mse) or nats (loss=ce)"
        },
    )
    loss: str = field(default="mse", metadata={"help": "mse or ce"})
    ce_batches: int = field(
        default=4,
        metadata={"help": "fewest batches spliced per precision when loss=ce"},
    )
    ce_max_batches: int = field(
        default=32,
        metadata={
            "help": "most batches spliced when loss=ce; more are added until "
            "the choice is stable"
        },
    )
    stability: float = field(
        default=0.9,
        metadata={
            "help": "share of bootstrap resamples of batches that must agree "
            "with the chosen precision before loss=ce stops adding batches"
        },
    )
    per_latent: bool = field(
        default=False,
        metadata={
            "help": "also allocate a precision per latent by marginal bits "
            "saved per unit of MSE (loss=mse)"
        },
    )

    def __post_init__(self):
        check_config(self)


@dataclass
class DescriptionLength:
    """The result of ``description_length``.

    ``precision_low``/``precision_high`` bound the choices of 90% of bootstrap
    resamples of the batches, ``precision_stability`` is the share that agree
    with the choice, and ``loss_increase_se`` the bootstrap standard error of
    the loss increase at the chosen precision.  ``warnings`` says when the
    choice sits at an end of the ladder.  ``per_latent_*`` is set with
    ``per_latent=True`` (see :mod:`.allocation`).
    """

    bits_per_token: float
    precision: float
    loss: float
    loss_kind: str
    tolerance_met: bool
    unquantised_loss: float
    l0: float
    naive_bound_bits: float
    latents: pd.DataFrame
    precisions: pd.DataFrame
    tolerance: float = float("nan")
    ladder_placement: str = "absolute"
    activation_scale: float | None = None
    pilot_precision: float | None = None
    loss_increase: float = float("nan")
    loss_increase_se: float = float("nan")
    precision_low: float = float("nan")
    precision_high: float = float("nan")
    precision_stability: float = float("nan")
    loss_batches: int = 0
    warnings: list[str] = field(default_factory=list)
    per_latent_bits: float | None = None
    per_latent_predicted_increase: float | None = None
    uniform_predicted_increase: float | None = None

    def metrics(self) -> dict:
        """Headline numbers for summaries."""
        metrics = {
            "bits_per_token": self.bits_per_token,
            "precision": self.precision,
            f"{self.loss_kind}_at_precision": self.loss,
            f"{self.loss_kind}_unquantised": self.unquantised_loss,
            f"{self.loss_kind}_increase": self.loss_increase,
            f"{self.loss_kind}_increase_se": self.loss_increase_se,
            "tolerance_met": self.tolerance_met,
            "precision_low": self.precision_low,
            "precision_high": self.precision_high,
            "precision_stability": self.precision_stability,
            "loss_batches": self.loss_batches,
            "ladder_placement": self.ladder_placement,
            "activation_scale": self.activation_scale,
            "pilot_precision": self.pilot_precision,
            "ladder_finest": float(self.precisions["precision"].min()),
            "ladder_coarsest": float(self.precisions["precision"].max()),
            "at_ladder_end": bool(self.warnings),
            "l0": self.l0,
            "naive_bound_bits": self.naive_bound_bits,
            "dead_latents": int((self.latents["firing_frequency"] == 0).sum()),
        }
        if self.per_latent_bits is not None:
            metrics["per_latent_bits_per_token"] = self.per_latent_bits
            metrics["per_latent_predicted_increase"] = (
                self.per_latent_predicted_increase
            )
            metrics["uniform_predicted_increase"] = self.uniform_predicted_increase
        return metrics


@dataclass
class CodeBatch:
    """One batch's code and errors, prepared once for every precision tried.

    ``rows``/``latents``/``values`` are the non-zero entries of
    ``feature_acts`` (row-major); ``error`` is ``x - decode(feature_acts)``
    (float64); ``mover`` gives the decode's move for deltas on those
    entries (:meth:`sae_lens_ext.CodeMap.mover`), None when the decode is
    not known to be affine.
    """

    x: torch.Tensor
    error: torch.Tensor
    feature_acts: torch.Tensor
    rows: torch.Tensor
    latents: torch.Tensor
    values: torch.Tensor
    mover: object = None

    def __post_init__(self):
        self.exact = self.values.double()


class MDLAccumulator:
    """One pass over activations: histograms and quantised errors per precision.

    The ladder is fixed by the first batch (:meth:`_place_ladder`); until then
    ``finest`` and the error sums are None.
    """

    def __init__(self, sae, config: MDLConfig, model=None, hook_name=None):
        check_config(config)
        require_reconstruction(sae, "mdl")
        self.sae, self.config = sae, config
        self.model, self.hook_name = model, hook_name
        self.ladder: Ladder | None = None
        self.finest: QuantisedHistograms | None = None
        self.n_levels = 0
        self.sq_err: torch.Tensor | None = None
        self.sq_err_clean = 0.0
        self.batch_sq_err: list[torch.Tensor] = []  # per batch [levels + 1]
        self.n = 0
        self.nonzero = 0
        self.max_abs = 0.0
        self.ce_per_batch: list[torch.Tensor] = []  # per batch [levels + 1]
        self.ce_mask: torch.Tensor | None = None  # this batch's spliced positions
        self.pilot_sq_err: dict[float, float] = {}  # first batch, by precision
        self.non_negative = sae.cfg.architecture() in NON_NEGATIVE_ARCHITECTURES
        self.code_map = code_map(sae)
        self.columns: torch.Tensor | None = None  # decode columns (per_latent)
        row_scaled = sae.cfg.normalize_activations in ROW_SCALED_NORMALISATIONS
        if config.per_latent and row_scaled:
            raise ValueError(
                "per_latent needs a decode that depends on the code alone, but this "
                f"SAE's normalize_activations={sae.cfg.normalize_activations!r} "
                "rescales each row by its own input; set mdl.per_latent to False"
            )
        self.latent_sq_err: torch.Tensor | None = None  # [levels, d_sae]
        if config.precision is not None or config.finest_precision is not None:
            fixed = config.precision is not None
            self._set_ladder(
                Ladder(
                    finest=config.precision if fixed else config.finest_precision,
                    n=1 if fixed else config.n_precisions,
                    placement="fixed" if fixed else "absolute",
                )
            )

    @property
    def ce_batches_done(self) -> int:
        """Batches on which the cross-entropy has been measured."""
        return len(self.ce_per_batch)

    def _set_ladder(self, ladder: Ladder) -> None:
        self.ladder = ladder
        # histograms and per-latent sums stay on the SAE's (activations') device
        device = self.sae.W_dec.device
        self.finest = QuantisedHistograms(
            self.sae.cfg.d_sae, ladder.finest, device=device
        )
        self.n_levels = ladder.n
        self.sq_err = torch.zeros(ladder.n, dtype=torch.float64)
        if self.config.per_latent:
            self.latent_sq_err = torch.zeros(
                ladder.n, self.sae.cfg.d_sae, dtype=torch.float64, device=device
            )

    def _place_ladder(self, batch: CodeBatch, tokens):
        """Place the ladder around the pilot's choice on this (first) batch."""
        scale = activation_scale(batch.values)
        config = self.config
        if config.loss == "ce":
            if tokens is None:
                raise ValueError(
                    "loss='ce' needs the token ids of each batch; pass "
                    "(activations, token_context) pairs or use loss='mse'"
                )
            clean = self._ce(tokens, None)

            def passes(octave):
                return self._ce(tokens, scale * 2.0**octave) - clean <= config.tolerance

        else:
            clean = batch.error.pow(2).sum().item()

            def passes(octave):
                precision = scale * 2.0**octave
                err = self._quantised_sq_err(
                    batch, bin_midpoints(batch.values, precision)
                )
                self.pilot_sq_err[precision] = err
                if clean == 0:
                    return err == 0
                return (err - clean) / clean <= config.tolerance

        octave = pilot_octave(passes)
        finer = max(0, config.n_precisions - 1 - config.coarser_octaves)
        self._set_ladder(
            Ladder(
                finest=scale * 2.0 ** (octave - finer),
                n=config.n_precisions,
                placement="scale",
                scale=scale,
                pilot_precision=scale * 2.0**octave,
            )
        )

    def histograms(self) -> Iterator[QuantisedHistograms]:
        """The histogram at each precision of the ladder, finest first.

        Only the finest table is kept; coarser ones are pooled from it on
        demand, one at a time.
        """
        for level in range(self.n_levels):
            yield self.finest.coarsened(level)

    def update(
        self,
        sae_in: torch.Tensor,
        feature_acts: torch.Tensor,
        token_context=None,
        sae_out: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ):
        """Add one batch of hook activations and their SAE encoding.

        ``sae_out`` is ``sae.decode(feature_acts)`` where the caller has it
        (decoding again is not possible for normalisations that keep
        per-row state from ``encode``).  ``positions`` (the batch's
        ``(sequence, position)`` rows) limits the CE splice to the positions
        the shared pass kept; without it every position is spliced.
        """
        self.ce_mask = (
            position_mask(token_context, positions)
            if token_context is not None and positions is not None
            else None
        )
        rows, latents = feature_acts.nonzero(as_tuple=True)
        values = feature_acts[rows, latents]
        if self.non_negative and values.numel() and values.min() < 0:
            raise ValueError(
                f"{self.sae.cfg.architecture()} SAEs have non-negative activations, "
                f"but got {values.min().item():.3g}; check that feature_acts come from "
                "sae.encode of this SAE"
            )
        n = feature_acts.shape[0]
        self.n += n
        self.nonzero += values.numel()
        if values.numel():
            self.max_abs = max(self.max_abs, values.abs().max().item())
        x = sae_in.double()
        with torch.no_grad():
            if sae_out is None:
                sae_out = self.sae.decode(feature_acts)
            batch_error = x - sae_out.reshape(x.shape).double()
            batch = CodeBatch(
                x,
                batch_error,
                feature_acts,
                rows,
                latents,
                values,
                mover=None
                if self.code_map is None
                else self.code_map.mover(x, rows, latents),
            )
            if self.ladder is None:
                self._place_ladder(batch, token_context)
            clean = batch_error.pow(2).sum().item()
            self.sq_err_clean += clean
            self.finest.add(latents, values, n)
            batch_sq_err = torch.zeros(self.n_levels + 1, dtype=torch.float64)
            batch_sq_err[0] = clean
            for level in range(self.n_levels):
                # the pilot measured some rungs on this (first) batch already:
                # the same precision, values and error, so the same number
                known = self.pilot_sq_err.pop(self.finest.precision * 2**level, None)
                if known is None:
                    quantised = self.finest.dequantise(values, level)
                    known = self._quantised_sq_err(batch, quantised)
                batch_sq_err[level + 1] = known
            self.pilot_sq_err.clear()
            self.sq_err += batch_sq_err[1:]
            self.batch_sq_err.append(batch_sq_err)
            if self.latent_sq_err is not None:
                self._add_latent_sq_err(batch)
        if self.config.loss == "ce" and token_context is not None:
            self._add_ce(token_context)

    def _add_latent_sq_err(self, batch: CodeBatch):
        """Per latent and rung, the additive part of the quantised error.

        ``delta^2 ||w_i||^2 - 2 delta e.w_i`` summed over the latent's non-zero
        values, with ``w_i`` the decode map's column (see :mod:`.allocation`).
        """
        batch_error, feature_acts = batch.error, batch.feature_acts
        rows, latents, values = batch.rows, batch.latents, batch.values
        if self.columns is None:
            self.columns = decode_columns(self.sae)
            check_affine_decode(self.sae, feature_acts, self.columns)
        norms = self.columns.pow(2).sum(1)
        along = torch.zeros(len(values), dtype=torch.float64, device=values.device)
        for start in range(0, len(values), 1 << 14):
            part = slice(start, start + (1 << 14))
            along[part] = (batch_error[rows[part]] * self.columns[latents[part]]).sum(1)
        for level in range(self.n_levels):
            delta = (self.finest.dequantise(values, level) - values).double()
            terms = delta.pow(2) * norms[latents] - 2 * delta * along
            self.latent_sq_err[level].index_add_(0, latents, terms)

    def _quantised_sq_err(self, batch: CodeBatch, quantised: torch.Tensor) -> float:
        """Squared reconstruction error with the non-zero values quantised.

        Where the decode is affine in the code (:func:`sae_lens_ext.code_map`:
        decoder-norm rescaling and the output normalisation included), the
        reconstruction moves by ``delta @ rows`` times the row's output scale,
        with ``delta`` (quantised minus exact) as sparse as the code: a sparse
        product replaces a dense decode per precision.  Otherwise SAE-Lens
        encodes and decodes the quantised code.
        """
        if batch.mover is None:
            x = batch.x
            dense = torch.zeros_like(batch.feature_acts)
            dense[batch.rows, batch.latents] = quantised.to(dense.dtype)
            self.sae.encode(x.to(dense.dtype))  # per-row state, if any
            decoded = self.sae.decode(dense).reshape(x.shape)
            return (x - decoded.double()).pow(2).sum().item()
        moved = batch.mover(quantised.double() - batch.exact)
        return (batch.error - moved).pow(2).sum().item()

    def _ce(self, tokens: torch.Tensor, precision: float | None) -> float:
        """The model's loss with the SAE spliced in, quantised at ``precision``."""
        if self.model is None:
            raise ValueError("loss='ce' needs the model; use loss='mse' without one")
        sae = self.sae

        def through(part):
            feats = sae.encode(part)
            if precision is not None:
                feats = torch.where(feats != 0, bin_midpoints(feats, precision), feats)
            return sae.decode(feats)

        def hook(acts, hook):
            return at_positions(acts, splice(sae, acts, through), self.ce_mask)

        with torch.no_grad():
            return self.model.run_with_hooks(
                tokens, return_type="loss", fwd_hooks=[(self.hook_name, hook)]
            ).item()

    def _add_ce(self, tokens: torch.Tensor) -> None:
        """Measure this batch's loss at every rung while the choice is unsettled.

        At least ``ce_batches`` batches, then more (up to ``ce_max_batches``)
        until ``stability`` of the bootstrap resamples agree on the choice.
        """
        config = self.config
        done = self.ce_batches_done
        if done >= config.ce_max_batches:
            return
        if done >= config.ce_batches and self._ce_stability() >= config.stability:
            return
        precisions = [None, *self.ladder.precisions]
        losses = [self._ce(tokens, precision) for precision in precisions]
        self.ce_per_batch.append(torch.tensor(losses, dtype=torch.float64))

    def _ce_stability(self) -> float:
        """Share of bootstrap resamples of the CE batches agreeing on the choice."""
        ce = torch.stack(self.ce_per_batch)
        increases = ce[:, 1:] - ce[:, :1]
        weights = torch.ones(len(ce), dtype=torch.float64)
        choice, _ = choice_on_ladder(
            (increases.mean(0) <= self.config.tolerance).tolist()
        )
        choices, _ = bootstrap_choices(increases, weights, self.config.tolerance)
        return float((choices == choice).double().mean())

    def result(self) -> DescriptionLength:
        """Entropies, losses per precision, and the chosen precision."""
        if self.n == 0:
            raise ValueError("no activations were seen; give a non-empty source")
        if self.nonzero == 0:
            raise ValueError(
                "every latent is dead on these activations (all zero): the code "
                "carries no information; check the SAE and its hook"
            )
        d_in = self.sae.cfg.d_in
        mse = (self.sq_err / (self.n * d_in)).tolist()
        mse_clean = self.sq_err_clean / (self.n * d_in)
        statistics = self.finest.ladder_statistics(self.n_levels)
        entropies = statistics.entropy.cpu()
        bits = entropies.sum(1).tolist()
        table = pd.DataFrame(
            {
                "precision": [self.finest.precision * 2**j for j in range(len(bits))],
                "bits_per_token": bits,
                "mse": mse,
                "relative_mse_increase": [relative_increase(m, mse_clean) for m in mse],
            }
        )
        increases, weights = self._batch_increases()
        tolerance = self.config.tolerance
        if self.config.loss == "ce":
            ce = torch.stack(self.ce_per_batch).mean(0).tolist()
            table["ce_loss"] = ce[1:]
            table["ce_increase"] = [c - ce[0] for c in ce[1:]]
            increase_column = "ce_increase"
            clean_loss, losses = ce[0], table["ce_loss"]
        else:
            increase_column = "relative_mse_increase"
            clean_loss, losses = mse_clean, table["mse"]
        choice, met = choice_on_ladder((table[increase_column] <= tolerance).tolist())
        table["passes"] = table[increase_column] <= tolerance
        table["chosen"] = table.index == choice
        choices, resampled = bootstrap_choices(increases, weights, tolerance)
        precisions = table["precision"].to_numpy()
        low = torch.quantile(choices.double(), 0.05, interpolation="lower")
        high = torch.quantile(choices.double(), 0.95, interpolation="higher")
        warning = ladder_end_warning(choice, met, len(table), self.config.loss)
        if warning:
            warnings.warn(f"MDL: {warning}", stacklevel=2)
        chosen_precision = float(precisions[choice])
        l0 = self.nonzero / self.n
        latents = pd.DataFrame(
            {
                "latent": range(self.sae.cfg.d_sae),
                "firing_frequency": (statistics.nonzero.cpu() / self.n).numpy(),
                "entropy_bits": entropies[choice].numpy(),
                "bins_used": statistics.bins_used[choice].cpu().numpy(),
            }
        )
        allocation = self._allocation(entropies)
        if allocation is not None:
            latents["allocated_precision"] = precisions[allocation.rungs.numpy()]
            latents["allocated_entropy_bits"] = (
                entropies[allocation.rungs, torch.arange(len(latents))]
            ).numpy()
        values_bits = math.log2(max(2.0, 2 * self.max_abs / chosen_precision))
        return DescriptionLength(
            bits_per_token=bits[choice],
            precision=chosen_precision,
            loss=float(losses[choice]),
            loss_kind=self.config.loss,
            tolerance_met=met,
            unquantised_loss=clean_loss,
            l0=l0,
            naive_bound_bits=l0 * (math.log2(self.sae.cfg.d_sae) + values_bits),
            latents=latents,
            precisions=table,
            tolerance=tolerance,
            ladder_placement=self.ladder.placement,
            activation_scale=self.ladder.scale,
            pilot_precision=self.ladder.pilot_precision,
            loss_increase=float(table[increase_column][choice]),
            loss_increase_se=float(resampled[:, choice].std()),
            precision_low=float(precisions[int(low)]),
            precision_high=float(precisions[int(high)]),
            precision_stability=float((choices == choice).double().mean()),
            loss_batches=len(increases),
            warnings=[warning] if warning else [],
            per_latent_bits=None if allocation is None else allocation.bits,
            per_latent_predicted_increase=None
            if allocation is None
            else allocation.predicted_loss_increase / self.sq_err_clean,
            uniform_predicted_increase=None
            if allocation is None
            else float(self.latent_sq_err[choice].sum()) / self.sq_err_clean,
        )

    def _batch_increases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per batch, the loss increase at each rung and its divisor."""
        if self.config.loss == "ce":
            ce = torch.stack(self.ce_per_batch)
            return ce[:, 1:] - ce[:, :1], torch.ones(len(ce), dtype=torch.float64)
        sq = torch.stack(self.batch_sq_err)
        return sq[:, 1:] - sq[:, :1], sq[:, 0]

    def _allocation(self, entropies: torch.Tensor) -> Allocation | None:
        """Per-latent precisions within the tolerance (``per_latent=True``)."""
        if self.latent_sq_err is None:
            return None
        budget = self.config.tolerance * self.sq_err_clean
        return allocate_precisions(entropies, self.latent_sq_err.cpu(), budget)


def relative_increase(loss: float, clean: float) -> float:
    """``(loss - clean) / clean``; with a perfect reconstruction (``clean`` 0)
    a lossless precision gives 0 and any loss gives infinity."""
    if clean > 0:
        return (loss - clean) / clean
    return 0.0 if loss <= clean else math.inf


def check_config(config: MDLConfig) -> None:
    """Raise ValueError for settings that cannot work."""
    if config.precision is not None and not config.precision > 0:
        raise ValueError(f"precision must be > 0, got {config.precision}")
    if config.finest_precision is not None and not config.finest_precision > 0:
        raise ValueError(f"finest_precision must be > 0, got {config.finest_precision}")
    if config.n_precisions < 1:
        raise ValueError("n_precisions must be at least 1")
    if config.coarser_octaves < 0:
        raise ValueError(f"coarser_octaves must be >= 0, got {config.coarser_octaves}")
    if not 1 <= config.ce_batches <= config.ce_max_batches:
        raise ValueError(
            "need 1 <= ce_batches <= ce_max_batches, got "
            f"{config.ce_batches} and {config.ce_max_batches}"
        )
    if not 0 < config.stability <= 1:
        raise ValueError(f"stability must lie in (0, 1], got {config.stability}")
    if config.per_latent and config.loss != "mse":
        raise ValueError(
            "per_latent allocates precisions against the MSE; use loss='mse' "
            "with per_latent=True"
        )
    if config.loss not in ("mse", "ce"):
        raise ValueError(f"loss must be 'mse' or 'ce', got {config.loss!r}")
    if config.tolerance < 0:
        raise ValueError("tolerance must be >= 0")


def description_length(
    sae,
    activations_source: Iterable[torch.Tensor],
    *,
    precision: float | None = None,
    tolerance: float = 0.05,
    loss: str = "mse",
    **options,
) -> DescriptionLength:
    """Description length (bits per token) of ``sae``'s code on activations.

    ``activations_source`` yields hook activations ``[n, d_in]``; each batch
    is encoded with the SAE once.  ``loss="ce"`` needs ``model=`` and
    ``hook_name=`` and a source yielding ``(activations, token_context)``.
    """
    model = options.pop("model", None)
    hook_name = options.pop("hook_name", None)
    config = MDLConfig(precision=precision, tolerance=tolerance, loss=loss, **options)
    accumulator = MDLAccumulator(sae, config, model=model, hook_name=hook_name)
    with flat_rows(sae):
        for item in activations_source:
            sae_in, tokens = item if isinstance(item, tuple) else (item, None)
            with torch.no_grad():
                feats = sae.encode(sae_in.to(sae.W_dec.dtype))
                sae_out = sae.decode(feats)
            accumulator.update(sae_in, feats, tokens, sae_out)
    return accumulator.result()
