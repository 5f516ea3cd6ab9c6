"""Batched SGLD: every chain advances in one vectorised computation.

The parameters of all chains are stacked along a leading chain dimension.  One
``vmap`` of a ``functional_call`` of the model gives every chain's loss in a
single batched forward pass; one ``autograd.grad`` of their sum gives every
chain's gradient (chains share no parameters, so the gradient of the sum with
respect to chain c's slice is chain c's own gradient).  C chains thus cost one
batched forward and backward pass per step instead of C Python-level passes;
differentiating outside ``vmap`` is faster here than ``vmap(grad(...))``.

The update is the localised SGLD of Lau et al. (2023), exactly as devinterp
2.x's ``SGMCMC.sgld`` applies it::

    w <- w - (eps / 2) * (nbeta * grad L_B(w) + gamma * (w - w*)) + sqrt(eps) * N(0, 1)

with ``L_B`` the mean loss of the step's minibatch, recorded at the weights
before the update (devinterp records the same per-step loss).  Each chain may carry its
own ``eps``, ``nbeta`` and ``gamma`` (``calibrate_llc`` runs a whole grid of
settings as one batch of chains).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from .data import Data, minibatches, take_rows


class LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap weights."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        """The scalar loss of ``model`` on ``batch``."""
        return self.loss_fn(self.model, batch)


@dataclass
class ChainSettings:
    """Per-chain hyperparameters, each a float64 tensor of shape ``[chains]``."""

    step_size: torch.Tensor
    nbeta: torch.Tensor
    localization: torch.Tensor

    @property
    def num_chains(self) -> int:
        """How many chains these settings describe."""
        return self.step_size.shape[0]


@dataclass
class ChainTraces:
    """What the sampler records at every step, before that step's update.

    ``loss`` is the minibatch loss at the chain's current weights ``[C, T]``
    (NaN from the step a chain's loss became non-finite: the chain is frozen
    there), ``distance`` the Euclidean distance of the weights from ``w*``
    ``[C, T]``.
    """

    loss: torch.Tensor
    distance: torch.Tensor


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def sample_chains(
    loss_module: LossModule,
    anchor: dict[str, torch.Tensor],
    data: Data,
    n_rows: int,
    settings: ChainSettings,
    *,
    num_steps: int,
    batch_size: int,
    seed: int,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> ChainTraces:
    """Run ``settings.num_chains`` localised SGLD chains from ``anchor`` (w*).

    ``anchor`` maps the sampled parameters' names (as seen from
    ``loss_module``) to their values at w*; parameters not in it stay fixed.
    All chains see the same minibatch at each step, as devinterp's default
    ``match_sampling_input_ids_across_chains=True`` does.
    """
    device = next(iter(anchor.values())).device
    num_chains = settings.num_chains
    generator = torch.Generator(device=device).manual_seed(seed)
    batch_generator = torch.Generator().manual_seed(seed + 1)
    batches = minibatches(n_rows, batch_size, batch_generator)

    stacked = {
        name: value.unsqueeze(0).repeat(num_chains, *([1] * value.dim())).clone()
        for name, value in anchor.items()
    }
    half_step = (-0.5 * settings.step_size).to(device=device, dtype=torch.float32)
    noise_scale = settings.step_size.sqrt().to(device=device, dtype=torch.float32)
    nbeta = settings.nbeta.to(device=device, dtype=torch.float32)
    localization = settings.localization.to(device=device, dtype=torch.float32)

    def loss_of(params, batch):
        return functional_call(loss_module, params, (batch,))

    batched_loss = vmap(loss_of, in_dims=(0, None), randomness="different")
    names = list(stacked)
    loss_trace = torch.full((num_chains, num_steps), float("nan"), dtype=torch.float64)
    distance_trace = torch.full_like(loss_trace, float("nan"))
    alive = torch.ones(num_chains, dtype=torch.bool, device=device)

    bar = tqdm(
        range(num_steps),
        desc=f"SGLD ({num_chains} chains)",
        disable=not progress,
        leave=False,
    )
    full_batch = batch_size >= n_rows
    for step in bar:
        batch = data if full_batch else take_rows(data, next(batches))
        for value in stacked.values():
            value.requires_grad_(True)
        with autocast_context(device, autocast_dtype):
            losses = batched_loss(stacked, batch)
        gradients = torch.autograd.grad(
            losses.float().sum(), [stacked[n] for n in names]
        )
        grads = dict(zip(names, gradients, strict=True))
        for value in stacked.values():
            value.requires_grad_(False)
        losses = losses.detach().float()
        alive &= torch.isfinite(losses)
        loss_trace[:, step] = torch.where(alive, losses, float("nan")).double().cpu()
        if not alive.any():
            break
        with torch.no_grad():
            squared_distance = torch.zeros(num_chains, device=device)
            for name, current in stacked.items():
                shape = (num_chains,) + (1,) * (current.dim() - 1)
                offset = current - anchor[name]
                squared_distance += offset.pow(2).flatten(1).sum(1)
                drift = grads[name].float() * nbeta.view(shape) + offset * (
                    localization.view(shape)
                )
                noise = torch.randn(
                    current.shape,
                    generator=generator,
                    device=device,
                    dtype=current.dtype,
                )
                update = drift * half_step.view(shape) + noise * noise_scale.view(shape)
                if not alive.all():
                    update = torch.where(alive.view(shape), update, 0.0)
                current.add_(update.to(current.dtype))
        distance_trace[:, step] = (
            torch.where(alive, squared_distance.sqrt(), float("nan")).double().cpu()
        )
    bar.close()
    return ChainTraces(loss=loss_trace, distance=distance_trace)
