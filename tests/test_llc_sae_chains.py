"""The batched SAE loss equals the generic vmapped path, values and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import (
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens_ext_llc import estimate_llc, sae_loss_fn
from sae_lens_ext_llc.sampler import LossModule, chain_losses
from torch.func import functional_call, vmap

D_IN, D_SAE, CHAINS = 12, 40, 3


def build(kind: str, **options):
    """A small SAE-Lens SAE of ``kind`` with random, non-trivial weights."""
    torch.manual_seed(0)
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, **options))
    elif kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, **options))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, **options))
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.normal_(0, 0.3 if name.startswith("W") else 0.1)
        if kind == "jumprelu":
            sae.threshold.uniform_(0.0, 0.2)
    return sae


def stacked(sae, seed=1):
    """Per-chain weights: the SAE's own, perturbed differently in each chain."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: (
            p.detach() + 0.05 * torch.randn(CHAINS, *p.shape, generator=generator)
        ).requires_grad_(True)
        for name, p in sae.named_parameters()
    }


CASES = [
    ("relu", {}, 0.0),
    ("relu", {"apply_b_dec_to_input": False}, 0.2),
    ("topk", {}, 0.0),
    ("topk", {"apply_b_dec_to_input": False}, 0.2),
    ("topk", {"rescale_acts_by_decoder_norm": True}, 0.3),
    ("jumprelu", {}, 0.1),
]


@pytest.mark.parametrize(("kind", "options", "sparsity"), CASES)
def test_batched_loss_and_gradients_match_vmap(kind, options, sparsity):
    sae = build(kind, **options)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(2))
    loss = sae_loss_fn(float(x.pow(2).sum(-1).mean()), sparsity)
    module = LossModule(sae, loss)
    batched = chain_losses(module)
    assert loss.batched_for(sae) is not None  # the fast path is taken

    params = stacked(sae)
    fast = batched({f"model.{n}": v for n, v in params.items()}, x)
    fast_grads = torch.autograd.grad(
        fast.sum(), list(params.values()), allow_unused=True
    )

    params = stacked(sae)
    generic = vmap(lambda p, b: functional_call(module, p, (b,)), in_dims=(0, None))(
        {f"model.{n}": v for n, v in params.items()}, x
    )
    generic_grads = torch.autograd.grad(
        generic.sum(), list(params.values()), allow_unused=True
    )
    torch.testing.assert_close(fast, generic, rtol=1e-5, atol=1e-6)
    for name, got, want in zip(params, fast_grads, generic_grads, strict=True):
        # the JumpReLU threshold only enters through a comparison: no gradient
        zero = torch.zeros_like(params[name])
        got, want = (zero if g is None else g for g in (got, want))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["relu", "topk"])
def test_batched_loss_under_bf16_autocast_matches_vmap(kind):
    """Under autocast the batched loss is differentiated by autograd."""
    sae = build(kind)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(2))
    module = LossModule(sae, sae_loss_fn(float(x.pow(2).sum(-1).mean())))
    params = {f"model.{n}": v for n, v in stacked(sae).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = chain_losses(module)(params, x)
        generic = vmap(
            lambda p, b: functional_call(module, p, (b,)), in_dims=(0, None)
        )(params, x)
    torch.testing.assert_close(fast.float(), generic.float(), rtol=2e-2, atol=1e-3)
    assert fast.requires_grad


def test_unsupported_sae_uses_the_generic_path():
    sae = build("relu", normalize_activations="expected_average_only_in")
    assert sae_loss_fn(1.0).batched_for(sae) is None
    assert sae_loss_fn(1.0).batched_for(torch.nn.Linear(3, 3)) is None


def test_sampler_traces_are_the_same_on_both_paths():
    """Same seed, same noise and minibatches: the batched SAE path and the
    vmapped path sample the same chains."""
    sae = build("topk")
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(3))
    loss = sae_loss_fn(float(x.pow(2).sum(-1).mean()))
    options = dict(
        num_chains=2,
        num_draws=20,
        num_burnin=5,
        step_size=1e-4,
        batch_size=16,
        progress=False,
    )
    fast = estimate_llc(sae, loss, x, **options)
    generic = estimate_llc(sae, lambda model, batch: loss(model, batch), x, **options)
    np.testing.assert_allclose(
        fast.trace["loss"], generic.trace["loss"], rtol=1e-4, atol=1e-7
    )
    assert fast.llc == pytest.approx(generic.llc, rel=1e-3)


def test_frozen_parameters_keep_their_value_on_the_batched_path():
    """A parameter that does not require grad is not sampled; the batched loss
    takes the SAE's own value for it in every chain, as the vmap path does."""
    sae = build("topk")
    sae.b_dec.requires_grad_(False)
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(4))
    loss = sae_loss_fn(float(x.pow(2).sum(-1).mean()))
    options = dict(num_chains=2, num_draws=10, num_burnin=0, step_size=1e-4)
    fast = estimate_llc(sae, loss, x, progress=False, **options)
    generic = estimate_llc(
        sae, lambda model, batch: loss(model, batch), x, progress=False, **options
    )
    assert fast.n_params == D_IN * D_SAE * 2 + D_SAE
    np.testing.assert_allclose(
        fast.trace["loss"], generic.trace["loss"], rtol=1e-4, atol=1e-7
    )
