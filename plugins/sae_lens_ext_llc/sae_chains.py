"""Every chain's SAE loss in one batched computation, without ``vmap``.

For SAE-Lens's ``StandardSAE`` (ReLU), ``TopKSAE`` and ``JumpReLUSAE``, the
sampler's generic path (a ``vmap`` of ``functional_call``) spends much of a
step outside the matrix products: TopK's ``scatter_`` has no batching rule
and runs once per chain, and the decoder multiplies mostly zeros.  Here the
chains' weights are ``[chains, ...]`` tensors and the loss is written with
batched products; a TopK SAE decodes only its ``k`` active latents per row
(a gather of ``k`` decoder rows instead of a dense ``d_sae`` product).

It is the loss of :class:`.sae.SAELoss`, and is checked against the generic
path (values and gradients) in the tests.  Other SAE classes, activation
normalisation and ``hook_z`` reshaping fall back to the generic path.
"""

from __future__ import annotations

from collections.abc import Callable

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
        x = sae_in.to(w_enc.dtype)
        centred = (
            x - b_dec[:, None, :]
            if cfg.apply_b_dec_to_input
            else x.expand(chains, *x.shape)
        )
        hidden_pre = torch.baddbmm(b_enc[:, None, :], centred, w_enc)
        decoder_norms = w_dec.norm(dim=-1) if rescale or sparsity_coefficient else None
        if activation == "topk":
            if rescale:
                hidden_pre = hidden_pre * decoder_norms[:, None, :]
            values, latents = hidden_pre.topk(cfg.k, dim=-1, sorted=False)
            acts = values.relu()  # [chains, n, k]
            reconstruction = _decode_active(acts, latents, w_dec, b_dec, decoder_norms)
            if sparsity_coefficient:
                active_norms = decoder_norms.gather(1, latents.flatten(1))
                acts_times_norms = acts * active_norms.view_as(acts)
        else:
            acts = hidden_pre.relu()
            if activation == "jumprelu":
                acts = acts * (hidden_pre > weight("threshold")[:, None, :])
            reconstruction = torch.baddbmm(b_dec[:, None, :], acts, w_dec)
            if sparsity_coefficient:
                acts_times_norms = acts * decoder_norms[:, None, :]
        error = (reconstruction - x).pow(2).sum(-1).mean(-1) / activation_scale
        if not sparsity_coefficient:
            return error
        penalty = acts_times_norms.abs().sum(-1).mean(-1)
        return error + sparsity_coefficient * penalty

    return losses


def _decode_active(acts, latents, w_dec, b_dec, decoder_norms):
    """``sum_j acts[..., j] * W_dec[latents[..., j]] + b_dec`` per chain.

    ``acts`` and ``latents`` are ``[chains, n, k]``; ``decoder_norms`` (or
    None) divides the activations first, as ``rescale_acts_by_decoder_norm``
    does in SAE-Lens.
    """
    chains, n, k = latents.shape
    d_sae, d_in = w_dec.shape[1:]
    flat = latents + torch.arange(chains, device=latents.device)[:, None, None] * d_sae
    rows = F.embedding(flat.reshape(-1), w_dec.reshape(chains * d_sae, d_in))
    if decoder_norms is not None:
        acts = acts / decoder_norms.reshape(-1)[flat]
    mixed = torch.bmm(acts.reshape(chains * n, 1, k), rows.view(chains * n, k, d_in))
    return mixed.view(chains, n, d_in) + b_dec[:, None, :]
