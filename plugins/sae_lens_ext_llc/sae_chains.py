"""Every chain's SAE loss in one batched computation, without ``vmap``.

For SAE-Lens's ``StandardSAE`` (ReLU), ``TopKSAE`` and ``JumpReLUSAE``, the
sampler's generic path (a ``vmap`` of ``functional_call``) spends much of a
step outside the matrix products: TopK's ``scatter_`` has no batching rule
and runs once per chain, and the decoder multiplies mostly zeros.  Here the
chains' weights are ``[chains, ...]`` tensors and the loss is written with
batched products; a TopK SAE decodes only its ``k`` active latents per row
(a gather of ``k`` decoder rows instead of a dense ``d_sae`` product).

The backward pass is written by hand (:class:`_PlainSAELoss`): it skips the
``[chains, n, d_in]`` gradient of the centred input, since ``b_dec``'s share
of it is just ``-(sum of the pre-activation gradients) @ W_enc^T``, and for
a TopK SAE accumulates the decoder and encoder gradients into the ``k`` rows
and columns each input used.  Under autocast
the dense products (encoder, ReLU decoder and their gradients) run in the
autocast dtype and everything else in float32.

It is the loss of :class:`.sae.SAELoss`, and is checked against the generic
path (values and gradients) in the tests.  Other SAE classes, activation
normalisation and ``hook_z`` reshaping fall back to the generic path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from sae_lens import JumpReLUSAE, StandardSAE, TopKSAE

ChainLoss = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]

_ACTIVATIONS = {StandardSAE: "relu", TopKSAE: "topk", JumpReLUSAE: "jumprelu"}


def chain_sae_loss(
    sae, activation_scale: float, sparsity_coefficient: float
) -> ChainLoss | None:
    """``losses(params, sae_in) -> [chains]`` for ``sae``, or None if unsupported.

    ``params`` maps parameter names (``W_enc``, ``b_enc``, ``W_dec``,
    ``b_dec``, ``threshold``) to ``[chains, *shape]`` weights; a parameter
    not in it keeps the SAE's own value in every chain.
    """
    activation = _ACTIVATIONS.get(type(sae))
    if activation is None:
        return None
    cfg = sae.cfg
    if getattr(cfg, "normalize_activations", "none") != "none" or getattr(
        sae, "hook_z_reshaping_mode", False
    ):
        return None
    own = {name: p.detach() for name, p in sae.named_parameters()}
    rescale = activation == "topk" and cfg.rescale_acts_by_decoder_norm

    def losses(params: dict[str, torch.Tensor], sae_in: torch.Tensor):
        chains = next(iter(params.values())).shape[0]

        def weight(name: str) -> torch.Tensor:
            if name in params:
                return params[name]
            return own[name].expand(chains, *own[name].shape)

        w_enc, b_enc, w_dec, b_dec = map(weight, ("W_enc", "b_enc", "W_dec", "b_dec"))
        threshold = weight("threshold") if activation == "jumprelu" else None
        device_type = sae_in.device.type
        autocast = torch.is_autocast_enabled(device_type)
        spec = _Spec(
            activation,
            getattr(cfg, "k", 0),
            rescale,
            cfg.apply_b_dec_to_input,
            activation_scale,
            sparsity_coefficient,
            torch.get_autocast_dtype(device_type) if autocast else None,
        )
        with torch.autocast(device_type, enabled=False):
            return _PlainSAELoss.apply(
                sae_in.to(w_enc.dtype), w_enc, b_enc, w_dec, b_dec, threshold, spec
            )

    return losses


class _Spec(NamedTuple):
    """What :class:`_PlainSAELoss` computes besides the weights."""

    activation: str  # "relu", "topk" or "jumprelu"
    k: int
    rescale_acts_by_decoder_norm: bool
    apply_b_dec_to_input: bool
    activation_scale: float
    sparsity_coefficient: float
    matmul_dtype: torch.dtype | None  # the dense products' dtype under autocast


def _product(a: torch.Tensor, b: torch.Tensor, spec: _Spec) -> torch.Tensor:
    """``bmm(a, b)``, in ``spec.matmul_dtype`` (result float32) if set."""
    if spec.matmul_dtype is None:
        return torch.bmm(a, b)
    return torch.bmm(a.to(spec.matmul_dtype), b.to(spec.matmul_dtype)).to(a.dtype)


class _PlainSAELoss(torch.autograd.Function):
    """Per-chain SAE loss ``[chains]`` with a hand-written backward pass."""

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, w_dec, b_dec, threshold, spec: _Spec):
        chains, d_sae, d_in = w_dec.shape
        n = x.shape[0]
        if spec.apply_b_dec_to_input:
            centred = x - b_dec[:, None, :]
        else:
            centred = x.expand(chains, n, d_in)
        hidden_pre = _product(centred, w_enc, spec) + b_enc[:, None, :]
        norms = (
            w_dec.norm(dim=-1)
            if spec.rescale_acts_by_decoder_norm or spec.sparsity_coefficient
            else None
        )
        if spec.activation == "topk":
            if spec.rescale_acts_by_decoder_norm:
                # select by W_dec-norm-scaled pre-activations; the decoder then
                # divides by the norm again, so each active latent contributes
                # relu(hidden_pre) * W_dec[latent]
                _, latents = (hidden_pre * norms[:, None, :]).topk(
                    spec.k, dim=-1, sorted=False
                )
                acts = hidden_pre.gather(-1, latents).relu()
            else:
                values, latents = hidden_pre.topk(spec.k, dim=-1, sorted=False)
                acts = values.relu()  # [chains, n, k]
            offsets = torch.arange(chains, device=x.device) * d_sae
            flat = latents + offsets[:, None, None]
            rows = F.embedding(flat.view(-1), w_dec.reshape(chains * d_sae, d_in))
            rows = rows.view(chains * n, spec.k, d_in)
            mixed = torch.bmm(acts.view(chains * n, 1, spec.k), rows)
            reconstruction = mixed.view(chains, n, d_in) + b_dec[:, None, :]
        else:
            acts = hidden_pre.relu()
            if spec.activation == "jumprelu":
                acts = acts * (hidden_pre > threshold[:, None, :])
            reconstruction = _product(acts, w_dec, spec) + b_dec[:, None, :]
            flat = rows = None
        error = reconstruction - x
        losses = error.pow(2).sum(-1).mean(-1) / spec.activation_scale
        if spec.sparsity_coefficient:
            # SAE-Lens's feature activations are acts * norm when rescaling
            weights = _penalty_weights(norms, flat, spec)
            penalty = (acts * weights).sum(-1).mean(-1)
            losses = losses + spec.sparsity_coefficient * penalty
        ctx.spec = spec
        ctx.save_for_backward(centred, acts, error, w_enc, w_dec, flat, rows, norms)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        centred, acts, error, w_enc, w_dec, flat, rows, norms = ctx.saved_tensors
        spec = ctx.spec
        chains, d_sae, d_in = w_dec.shape
        n = error.shape[1]
        per_row = grad_losses[:, None, None] / n  # d loss / d (row's term)
        grad_out = error * (2.0 / spec.activation_scale) * per_row  # [chains, n, d_in]
        grad_b_dec = grad_out.sum(1)
        if spec.activation == "topk":
            k = spec.k
            # k dot products per row: faster as multiply-and-sum than as a
            # batch of chains * n matrix-vector products
            grad_acts = (rows * grad_out.view(chains * n, 1, d_in)).sum(-1)
            grad_acts = grad_acts.view(chains, n, k)
            outer = acts[..., None] * grad_out[:, :, None, :]  # [chains, n, k, d_in]
            grad_w_dec = w_dec.new_zeros(chains * d_sae, d_in)
            grad_w_dec.index_add_(0, flat.view(-1), outer.view(-1, d_in))
            grad_w_dec = grad_w_dec.view(chains, d_sae, d_in)
        else:
            grad_acts = _product(grad_out, w_dec.transpose(1, 2), spec)
            grad_w_dec = _product(acts.transpose(1, 2), grad_out, spec)
        if spec.sparsity_coefficient:
            coefficient = spec.sparsity_coefficient * per_row
            grad_acts = grad_acts + coefficient * _penalty_weights(norms, flat, spec)
            if flat is not None:
                summed = acts.new_zeros(chains * d_sae)
                summed.index_add_(0, flat.view(-1), (acts * coefficient).view(-1))
                summed = summed.view(chains, d_sae)
            else:
                summed = (acts * coefficient).sum(1)
            # d(norm)/d W_dec = W_dec / norm; d(norm^2)/d W_dec = 2 W_dec
            if spec.rescale_acts_by_decoder_norm:
                direction = 2.0 * w_dec
            else:
                direction = w_dec / norms.clamp_min(1e-12)[..., None]
            grad_w_dec = grad_w_dec + summed[..., None] * direction
        grad_pre_active = grad_acts * (acts > 0)
        if spec.activation == "topk":
            # only k pre-activations per row carry a gradient: accumulate
            # their outer products with the input into W_enc's columns
            # (k * d_in numbers per row instead of a dense d_sae product)
            outer = grad_pre_active[..., None] * centred[:, :, None, :]
            columns = w_enc.new_zeros(chains * d_sae, d_in)
            columns.index_add_(0, flat.view(-1), outer.view(-1, d_in))
            grad_w_enc = columns.view(chains, d_sae, d_in).transpose(1, 2)
            grad_b_enc = acts.new_zeros(chains * d_sae)
            grad_b_enc.index_add_(0, flat.view(-1), grad_pre_active.view(-1))
            grad_b_enc = grad_b_enc.view(chains, d_sae)
        else:
            grad_b_enc = grad_pre_active.sum(1)
            grad_w_enc = _product(centred.transpose(1, 2), grad_pre_active, spec)
        if spec.apply_b_dec_to_input:
            # d/d b_dec of x - b_dec: minus the summed pre-activation gradient
            # pulled back through W_enc
            pulled = torch.bmm(grad_b_enc[:, None, :], w_enc.transpose(1, 2))
            grad_b_dec = grad_b_dec - pulled[:, 0]
        return None, grad_w_enc, grad_b_enc, grad_w_dec, grad_b_dec, None, None


def _penalty_weights(norms, flat, spec: _Spec) -> torch.Tensor:
    """What each activation is multiplied by in the sparsity penalty:
    the decoder norm, squared when activations are rescaled by it."""
    weights = norms.pow(2) if spec.rescale_acts_by_decoder_norm else norms
    return weights.view(-1)[flat] if flat is not None else weights[:, None, :]
