"""The LLC of an SAE-Lens SAE's own weights on a sample of its input activations.

The loss is the reconstruction error per token, the sum over ``d_in`` of
squared errors averaged over tokens and divided by the sample's mean squared
activation norm (so 1.0 means "reconstructs nothing", the same scale for every
SAE and hook), optionally plus the L1 sparsity penalty of SAE-Lens's standard
SAE, ``coefficient * sum_i |f_i| * |W_dec[i]|``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .calibration import calibrate_llc
from .estimator import LLCResult, estimate_llc
from .sae_chains import ChainLoss, chain_sae_loss


class SAELoss:
    """``loss_fn(sae, sae_in)``: normalised reconstruction MSE (+ L1 term).

    ``activation_scale`` is the mean squared norm of the activations the
    loss is normalised by; ``sparsity_coefficient`` > 0 adds the decoder-norm
    weighted L1 penalty of the latents.  :meth:`batched_for` gives the
    sampler the same loss for all chains at once where the SAE's
    architecture allows (see :mod:`.sae_chains`).
    """

    def __init__(self, activation_scale: float, sparsity_coefficient: float = 0.0):
        if not activation_scale > 0:
            raise ValueError(
                f"activation_scale must be > 0, got {activation_scale}; the "
                "activations are all zero, so there is nothing to reconstruct"
            )
        if sparsity_coefficient < 0:
            raise ValueError(
                f"sparsity_coefficient must be >= 0, got {sparsity_coefficient}"
            )
        self.activation_scale = activation_scale
        self.sparsity_coefficient = sparsity_coefficient

    def __call__(self, sae, sae_in: torch.Tensor) -> torch.Tensor:
        """The loss of ``sae`` on the rows ``sae_in``."""
        feature_acts = sae.encode(sae_in)
        reconstruction = sae.decode(feature_acts)
        error = (reconstruction - sae_in).pow(2).sum(-1).mean() / self.activation_scale
        if self.sparsity_coefficient == 0:
            return error
        decoder_norms = sae.W_dec.norm(dim=-1)
        penalty = (feature_acts.abs() * decoder_norms).sum(-1).mean()
        return error + self.sparsity_coefficient * penalty

    def batched_for(self, sae) -> ChainLoss | None:
        """All chains' losses in one computation for ``sae``, or None."""
        return chain_sae_loss(sae, self.activation_scale, self.sparsity_coefficient)


def sae_loss_fn(
    activation_scale: float, sparsity_coefficient: float = 0.0
) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """The :class:`SAELoss` with this scale and sparsity coefficient."""
    return SAELoss(activation_scale, sparsity_coefficient)


SAE_LLC_DEFAULTS: dict[str, Any] = {
    "num_chains": 4,
    "num_draws": 200,
    "num_burnin": 50,
    "step_size": 3e-4,
    "nbeta": None,
    "localization": 1000.0,
}
"""The one set of defaults of ``estimate_sae_llc`` and the ``llc`` analysis.

``step_size`` is used only when calibration is off or recommends nothing.
nbeta None is m / log m for minibatch size m; localization 1000 keeps the
chains of a 263k-weight SAE in a ball the loss can be measured in (see
docs/llc.md for the sweep behind these numbers).
"""

CALIBRATION_STEP_SIZES = (3e-5, 1e-4, 3e-4)
CALIBRATION_CHAINS = 2


def estimate_sae_llc(
    sae: nn.Module,
    activations: torch.Tensor,
    *,
    sparsity_coefficient: float = 0.0,
    calibrate: bool = True,
    calibration_step_sizes: tuple[float, ...] = CALIBRATION_STEP_SIZES,
    calibration_chains: int = CALIBRATION_CHAINS,
    calibration_budget: int | None = None,
    **options,
) -> LLCResult:
    """``estimate_llc`` of ``sae``'s weights on ``activations`` ``[n, d_in]``.

    ``options`` go to ``estimate_llc`` (``num_chains``, ``num_draws``,
    ``step_size``, ``nbeta``, ``localization``, ``batch_size``,
    ``autocast_dtype``, ``seed``, ``threads``...); the ones not given take
    :data:`SAE_LLC_DEFAULTS`, the defaults the ``llc`` analysis uses too.
    With ``calibrate`` (the default) and no explicit ``step_size``,
    ``calibrate_llc`` first sweeps ``calibration_step_sizes`` with
    ``calibration_chains`` chains each (within ``calibration_budget``
    chain-steps) and the estimate runs at its recommendation; when it
    recommends nothing, at the default step size, and the result's
    ``calibration.reason`` says why.  The SAE itself is not modified.
    """
    if not isinstance(activations, torch.Tensor) or activations.dim() != 2:
        raise ValueError(
            "activations must be a 2-D tensor [n_tokens, d_in] of the SAE's "
            f"inputs, got {getattr(activations, 'shape', type(activations).__name__)}"
        )
    d_in = sae.cfg.d_in
    if activations.shape[1] != d_in:
        raise ValueError(
            f"activations have width {activations.shape[1]} but the SAE's d_in is "
            f"{d_in}; pass the activations at the SAE's hook"
        )
    activations = activations.to(sae.W_dec.device, sae.W_dec.dtype)
    scale = float(activations.pow(2).sum(-1).mean()) if len(activations) else 1.0
    loss_fn = sae_loss_fn(scale, sparsity_coefficient)
    settings = {**SAE_LLC_DEFAULTS, **options}
    calibration = None
    if calibrate and "step_size" not in options:
        shared = {
            key: settings[key]
            for key in (
                "batch_size",
                "seed",
                "autocast_dtype",
                "threads",
                "progress",
                "check_curvature",
            )
            if key in settings
        }
        calibration = calibrate_llc(
            sae,
            loss_fn,
            activations,
            step_sizes=calibration_step_sizes,
            nbetas=None if settings["nbeta"] is None else [settings["nbeta"]],
            localization=settings["localization"],
            num_chains=calibration_chains,
            num_draws=settings["num_draws"],
            num_burnin=settings["num_burnin"],
            budget=calibration_budget,
            **shared,
        )
        if calibration.recommended is not None:
            settings.update(calibration.estimate_options())
        if calibration.curvature is not None:
            settings["check_curvature"] = calibration.curvature
    result = estimate_llc(sae, loss_fn, activations, **settings)
    result.calibration = calibration
    return result
