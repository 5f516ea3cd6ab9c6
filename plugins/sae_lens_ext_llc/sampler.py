"""Batched SGLD: every chain advances in one vectorised computation.

The parameters of all chains are stacked along a leading chain dimension.  One
``vmap`` of a ``functional_call`` of the model gives every chain's loss in a
single batched forward pass; one ``autograd.grad`` of their sum gives every
chain's gradient (chains share no parameters, so the gradient of the sum with
respect to chain c's slice is chain c's own gradient).  C chains thus cost one
batched forward and backward pass per step instead of C Python-level passes;
differentiating outside ``vmap`` is faster here than ``vmap(grad(...))``.

All chains' weights live in one flat ``[chains, d]`` buffer (the model's
parameters are views of it), so the update below is a handful of fused
passes over one tensor, and the Gaussian noise of the next step is drawn on a
worker thread while the current step's forward and backward passes run.

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
from concurrent.futures import ThreadPoolExecutor
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
    ``[C, T]``.  ``acceptance`` (when tracked) is the Metropolis-adjusted
    Langevin (MALA) acceptance probability of the SGLD proposal made at each
    step ``[C, T]`` (NaN for the last step, whose proposal is never
    evaluated): near 1 when the discretised step leaves the localised tempered
    posterior almost unchanged.
    """

    loss: torch.Tensor
    distance: torch.Tensor
    acceptance: torch.Tensor | None = None


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class FlatChains:
    """The sampled parameters of every chain in one ``[chains, d]`` buffer.

    ``anchor`` maps parameter names to their values at w*; the buffer has
    their common (promoted) floating dtype, and :meth:`views` gives each
    chain's parameters back in their own shapes and dtypes; ``columns[i]``
    is the slice of the buffer's columns that holds parameter ``i``.
    """

    def __init__(self, anchor: dict[str, torch.Tensor], num_chains: int):
        values = list(anchor.values())
        self.names = list(anchor)
        self.shapes = [value.shape for value in values]
        self.dtypes = [value.dtype for value in values]
        self.sizes = [value.numel() for value in values]
        ends = torch.tensor(self.sizes).cumsum(0).tolist()
        self.columns = [
            slice(end - size, end) for end, size in zip(ends, self.sizes, strict=True)
        ]
        dtype = values[0].dtype
        for value in values[1:]:
            dtype = torch.promote_types(dtype, value.dtype)
        self.anchor = torch.cat(
            [value.detach().reshape(-1).to(dtype) for value in values]
        )
        self.weights = self.anchor.repeat(num_chains, 1)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter ``[chains, *shape]`` views of a ``[chains, d]`` tensor."""
        parts = flat.split(self.sizes, dim=1)
        return {
            name: part.view(flat.shape[0], *shape).to(dtype)
            for name, part, shape, dtype in zip(
                self.names, parts, self.shapes, self.dtypes, strict=True
            )
        }


class GaussianNoise:
    """Standard normal ``shape`` blocks from one seeded generator, one per step.

    On CPU the next block is drawn on a worker thread while the caller uses
    the current one (two buffers take turns), so drawing the noise overlaps
    the step's forward and backward passes; the sequence of blocks is the
    same as drawing them one after the other.
    """

    def __init__(self, shape, dtype, device: torch.device, seed: int):
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.buffers = [torch.empty(shape, dtype=dtype, device=device) for _ in "ab"]
        self.worker = ThreadPoolExecutor(1) if device.type == "cpu" else None
        self.pending = self._draw(0)

    def _fill(self, index: int) -> int:
        self.buffers[index].normal_(generator=self.generator)
        return index

    def _draw(self, index: int):
        if self.worker is None:
            return self._fill(index)
        return self.worker.submit(self._fill, index)

    def next(self) -> torch.Tensor:
        """The next block; valid until the call after this one."""
        index = self.pending if self.worker is None else self.pending.result()
        self.pending = self._draw(1 - index)
        return self.buffers[index]

    def close(self) -> None:
        """Stop the worker thread."""
        if self.worker is not None:
            self.worker.shutdown(wait=True, cancel_futures=True)


def chain_losses(loss_module: LossModule) -> Callable:
    """``losses(params, batch) -> [chains]`` for ``[chains, ...]`` parameters.

    A ``loss_fn`` with a ``batched_for(model)`` method that returns a
    function of ``(params, batch)`` (parameter names as in
    ``model.named_parameters()``) supplies its own batched form; otherwise
    the loss is a ``vmap`` of ``functional_call`` over the chains.
    """
    batched_for = getattr(loss_module.loss_fn, "batched_for", None)
    own = batched_for(loss_module.model) if batched_for is not None else None
    if own is not None:
        prefix = "model."
        return lambda params, batch: own(
            {name.removeprefix(prefix): value for name, value in params.items()}, batch
        )

    def loss_of(params, batch):
        return functional_call(loss_module, params, (batch,))

    return vmap(loss_of, in_dims=(0, None), randomness="different")


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
    track_acceptance: bool = False,
) -> ChainTraces:
    """Run ``settings.num_chains`` localised SGLD chains from ``anchor`` (w*).

    ``anchor`` maps the sampled parameters' names (as seen from
    ``loss_module``) to their values at w*; parameters not in it stay fixed.
    All chains see the same minibatch at each step, as devinterp's default
    ``match_sampling_input_ids_across_chains=True`` does.
    ``track_acceptance`` also records each step's MALA acceptance
    probability (:class:`MalaTracker`; a few more passes over the weights).
    """
    device = next(iter(anchor.values())).device
    num_chains = settings.num_chains
    batches = minibatches(n_rows, batch_size, torch.Generator().manual_seed(seed + 1))
    chains = FlatChains(anchor, num_chains)
    weights = chains.weights
    noise = GaussianNoise(weights.shape, weights.dtype, device, seed)

    def column(values: torch.Tensor) -> torch.Tensor:
        return values.to(device=device, dtype=weights.dtype)[:, None]

    # w += -(eps/2) nbeta grad - (eps/2) gamma (w - w*) + sqrt(eps) noise
    grad_factor = column(-0.5 * settings.step_size * settings.nbeta)
    pull_factor = column(-0.5 * settings.step_size * settings.localization)
    noise_factor = column(settings.step_size.sqrt())

    batched_loss = chain_losses(loss_module)
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
    offset = torch.empty_like(weights)  # w - w*, reused every step
    mala = MalaTracker(settings, weights, num_steps) if track_acceptance else None
    try:
        for step in bar:
            batch = data if full_batch else take_rows(data, next(batches))
            weights.requires_grad_(True)
            params = chains.views(weights)
            with autocast_context(device, autocast_dtype):
                losses = batched_loss(params, batch)
            # gradients of the views, not of the flat buffer: no concatenation
            gradients = torch.autograd.grad(
                losses.float().sum(), list(params.values()), allow_unused=True
            )
            weights.requires_grad_(False)
            losses = losses.detach().float()
            alive &= torch.isfinite(losses)
            loss_trace[:, step] = (
                torch.where(alive, losses, float("nan")).double().cpu()
            )
            if not alive.any():
                break
            with torch.no_grad():
                offset = torch.sub(weights, chains.anchor, out=offset)
                distance = torch.linalg.vector_norm(offset, dim=1)
                distance_trace[:, step] = (
                    torch.where(alive, distance, float("nan")).double().cpu()
                )
                update = offset.mul_(pull_factor)
                for columns, gradient in zip(chains.columns, gradients, strict=True):
                    if gradient is not None:  # in its own layout: no copy
                        shape = (num_chains,) + (1,) * (gradient.dim() - 1)
                        update[:, columns].view(gradient.shape).addcmul_(
                            gradient, grad_factor.view(shape)
                        )
                step_noise = noise.next()
                if mala is not None:  # update holds the drift -(eps/2) grad U
                    mala.record(step, losses, distance, update, step_noise)
                update.addcmul_(step_noise, noise_factor)
                if mala is not None:
                    mala.keep(update)
                if not alive.all():
                    update = torch.where(alive[:, None], update, 0.0)
                weights.add_(update)
    finally:
        noise.close()
        bar.close()
    return ChainTraces(
        loss=loss_trace,
        distance=distance_trace,
        acceptance=None if mala is None else mala.acceptance,
    )


class MalaTracker:
    """MALA acceptance probabilities of the SGLD proposals, step by step.

    The chains sample p(w) ~ exp(-U(w)) with U(w) = nbeta L(w) +
    (gamma / 2) |w - w*|^2.  The SGLD step w -> w' = w + drift(w) + sqrt(eps)
    xi, drift = -(eps / 2) grad U, is a Langevin proposal; Metropolis would
    accept it with probability min(1, exp(a)),

        a = U(w) - U(w') - |w - w' - drift(w')|^2 / (2 eps) + |xi|^2 / 2

    (the reverse proposal's density over the forward one).  Near 1 the
    discretisation barely distorts the target; a low rate means the step size
    biases the estimate.  The loss and gradient are the step's minibatch ones
    (exact with full batches), as in devinterp's MALA callback.  Evaluating
    the proposal made at step t needs U and the drift at step t + 1, so each
    step keeps its update and finishes the previous step's probability.
    """

    def __init__(self, settings: ChainSettings, weights: torch.Tensor, steps: int):
        self.nbeta = settings.nbeta.double()
        self.localization = settings.localization.double()
        self.step_size = settings.step_size.double()
        self.acceptance = torch.full(
            (settings.num_chains, steps), float("nan"), dtype=torch.float64
        )
        self.previous_update = torch.empty_like(weights)
        self.previous_potential: torch.Tensor | None = None
        self.previous_noise_sq: torch.Tensor | None = None

    def record(self, step, losses, distance, drift, step_noise) -> None:
        """Finish the previous step's probability with this step's U and drift."""
        potential = (
            self.nbeta * losses.double().cpu()
            + 0.5 * self.localization * distance.double().cpu() ** 2
        )
        if self.previous_potential is not None:
            reverse = self.previous_update.add_(drift)  # w' - w + drift(w')
            reverse_sq = torch.linalg.vector_norm(reverse, dim=1, dtype=torch.float64)
            log_accept = (
                self.previous_potential
                - potential
                - reverse_sq.cpu() ** 2 / (2 * self.step_size)
                + self.previous_noise_sq / 2
            )
            self.acceptance[:, step - 1] = log_accept.clamp(max=0.0).exp()
        self.previous_potential = potential
        noise_norm = torch.linalg.vector_norm(step_noise, dim=1, dtype=torch.float64)
        self.previous_noise_sq = noise_norm.cpu() ** 2

    def keep(self, update: torch.Tensor) -> None:
        """Remember this step's full update (w' - w) for the next step."""
        self.previous_update.copy_(update)
