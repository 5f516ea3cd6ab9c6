"""Description length of an SAE's latent code (Ayonrinde, Pearce, Sharkey 2024).

For each candidate precision ``p`` (a ladder ``p0 * 2**j``) one streaming pass
accumulates, per latent, the histogram of its quantised activations and the
squared reconstruction error when every latent is quantised at ``p``.  Then

    DL(p) = sum_i H(q_p(a_i))          bits per token

and the chosen precision is the coarsest one whose relative MSE increase over
the unquantised SAE stays within ``tolerance``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch

from sae_lens_ext import code_map, flat_rows, require_reconstruction, splice

from .histograms import QuantisedHistograms

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
    finest_precision: float = field(
        default=2**-7, metadata={"help": "finest bin width of the search ladder"}
    )
    n_precisions: int = field(
        default=10, metadata={"help": "ladder length: finest * 2**j, j < n"}
    )
    tolerance: float = field(
        default=0.05,
        metadata={
            "help": "allowed loss increase: relative MSE (loss=mse) or nats (loss=ce)"
        },
    )
    loss: str = field(default="mse", metadata={"help": "mse or ce"})
    ce_batches: int = field(
        default=2, metadata={"help": "batches spliced per precision when loss=ce"}
    )

    def __post_init__(self):
        check_config(self)


@dataclass
class DescriptionLength:
    """The result of ``description_length``."""

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

    def metrics(self) -> dict:
        """Headline numbers for summaries."""
        return {
            "bits_per_token": self.bits_per_token,
            "precision": self.precision,
            f"{self.loss_kind}_at_precision": self.loss,
            f"{self.loss_kind}_unquantised": self.unquantised_loss,
            "tolerance_met": self.tolerance_met,
            "l0": self.l0,
            "naive_bound_bits": self.naive_bound_bits,
            "dead_latents": int((self.latents["firing_frequency"] == 0).sum()),
        }


class MDLAccumulator:
    """One pass over activations: histograms and quantised errors per precision."""

    def __init__(self, sae, config: MDLConfig, model=None, hook_name=None):
        check_config(config)
        require_reconstruction(sae, "mdl")
        self.sae, self.config = sae, config
        self.model, self.hook_name = model, hook_name
        d_sae = sae.cfg.d_sae
        ladder = (
            [config.precision]
            if config.precision is not None
            else [config.finest_precision * 2**j for j in range(config.n_precisions)]
        )
        self.finest = QuantisedHistograms(d_sae, ladder[0])
        self.n_levels = len(ladder)
        self.sq_err = torch.zeros(len(ladder), dtype=torch.float64)
        self.sq_err_clean = 0.0
        self.n = 0
        self.nonzero = 0
        self.max_abs = 0.0
        self.ce = torch.zeros(len(ladder) + 1, dtype=torch.float64)
        self.ce_batches_done = 0
        self.non_negative = sae.cfg.architecture() in NON_NEGATIVE_ARCHITECTURES
        self.code_map = code_map(sae)

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
    ):
        """Add one batch of hook activations and their SAE encoding.

        ``sae_out`` is ``sae.decode(feature_acts)`` where the caller has it
        (decoding again is not possible for normalisations that keep
        per-row state from ``encode``).
        """
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
            self.sq_err_clean += batch_error.pow(2).sum().item()
            self.finest.add(latents, values, n)
            for level in range(self.n_levels):
                quantised = self.finest.dequantise(values, level)
                self.sq_err[level] += self._quantised_sq_err(
                    x, batch_error, feature_acts, rows, latents, quantised
                )
        if self.config.loss == "ce" and token_context is not None:
            self._add_ce(token_context)

    def _quantised_sq_err(self, x, batch_error, feature_acts, rows, latents, quantised):
        """Squared reconstruction error with the non-zero values quantised.

        Where the decode is affine in the code (:func:`sae_lens_ext.code_map`:
        decoder-norm rescaling and the output normalisation included), the
        reconstruction moves by ``delta @ rows`` times the row's output scale,
        with ``delta`` (quantised minus exact) as sparse as the code: a sparse
        product replaces a dense decode per precision.  Otherwise SAE-Lens
        encodes and decodes the quantised code.
        """
        if self.code_map is None:
            dense = torch.zeros_like(feature_acts)
            dense[rows, latents] = quantised.to(dense.dtype)
            self.sae.encode(x.to(feature_acts.dtype))  # per-row state, if any
            decoded = self.sae.decode(dense).reshape(x.shape)
            return (x - decoded.double()).pow(2).sum().item()
        deltas = quantised.double() - feature_acts[rows, latents].double()
        moved = self.code_map.moved(x, rows, latents, deltas)
        return (batch_error - moved).pow(2).sum().item()

    def _add_ce(self, tokens: torch.Tensor) -> None:
        if self.model is None:
            raise ValueError("loss='ce' needs the model; use loss='mse' without one")
        if self.ce_batches_done >= self.config.ce_batches:
            return
        sae = self.sae

        def spliced_at(level):
            def through(part):
                feats = sae.encode(part)
                if level is not None:
                    quantised = self.finest.dequantise(feats, level)
                    feats = torch.where(feats != 0, quantised, feats)
                return sae.decode(feats)

            def hook(acts, hook):
                return splice(sae, acts, through)

            return hook

        with torch.no_grad():
            levels = [None, *range(self.n_levels)]
            for j, level in enumerate(levels):
                self.ce[j] += self.model.run_with_hooks(
                    tokens,
                    return_type="loss",
                    fwd_hooks=[(self.hook_name, spliced_at(level))],
                ).item()
        self.ce_batches_done += 1

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
        entropies = [h.entropy() for h in self.histograms()]
        bits = [e.sum().item() for e in entropies]
        table = pd.DataFrame(
            {
                "precision": [self.finest.precision * 2**j for j in range(len(bits))],
                "bits_per_token": bits,
                "mse": mse,
                "relative_mse_increase": [relative_increase(m, mse_clean) for m in mse],
            }
        )
        if self.config.loss == "ce":
            ce = (self.ce / max(self.ce_batches_done, 1)).tolist()
            table["ce_loss"] = ce[1:]
            table["ce_increase"] = [c - ce[0] for c in ce[1:]]
            within = table["ce_increase"] <= self.config.tolerance
            clean_loss, losses = ce[0], table["ce_loss"]
        else:
            within = table["relative_mse_increase"] <= self.config.tolerance
            clean_loss, losses = mse_clean, table["mse"]
        met = bool(within.any())
        choice = int(table.index[within].max()) if met else 0
        hist = self.finest.coarsened(choice)
        l0 = self.nonzero / self.n
        latents = pd.DataFrame(
            {
                "latent": range(self.sae.cfg.d_sae),
                "firing_frequency": (hist.nonzero_counts() / self.n).numpy(),
                "entropy_bits": entropies[choice].numpy(),
                "bins_used": hist.bins_used().numpy(),
            }
        )
        values_bits = math.log2(max(2.0, 2 * self.max_abs / hist.precision))
        return DescriptionLength(
            bits_per_token=bits[choice],
            precision=hist.precision,
            loss=float(losses[choice]),
            loss_kind=self.config.loss,
            tolerance_met=met,
            unquantised_loss=clean_loss,
            l0=l0,
            naive_bound_bits=l0 * (math.log2(self.sae.cfg.d_sae) + values_bits),
            latents=latents,
            precisions=table,
        )


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
    if not config.finest_precision > 0:
        raise ValueError(f"finest_precision must be > 0, got {config.finest_precision}")
    if config.n_precisions < 1:
        raise ValueError("n_precisions must be at least 1")
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
