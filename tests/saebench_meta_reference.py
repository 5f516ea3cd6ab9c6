"""SAEBench's meta_structure eval, re-implemented densely from its description.

Written from SAEBench's README and eval config (``width_ratio`` 0.25, ``k`` 4,
``train_steps`` 1500, ``train_batch_size`` 1024, ``learning_rate`` 5e-4,
constant, ``eval_batch_size`` 4096; "batches are sampled with replacement")
and from SAE-Lens's documented training SAE that it trains: a BatchTopK SAE
with ``rescale_acts_by_decoder_norm`` (activations scaled by each decoder
row's norm before the selection, divided by it in the decoder),
``decoder_init_norm`` 0.1 (kaiming-uniform rows scaled to norm 0.1, the
encoder their transpose, both biases zero), the loss summed over ``d_in`` and
averaged over rows, Adam, gradients clipped to a total norm of 1.  The
score is ``1 - sum ||d - recon(d)||^2 / sum ||d - mean d||^2`` over every
decoder row, with BatchTopK over each evaluation batch.

Everything is dense autograd, one obvious line per formula: slow, and the
reference the fast sparse trainer is tested against.
"""

from __future__ import annotations

import math

import torch


def batch_topk(hidden: torch.Tensor, k: float) -> torch.Tensor:
    """Keep the ``int(k * rows)`` largest ReLU'd entries of the whole batch."""
    flat = hidden.relu().flatten()
    top = torch.topk(flat, int(k * hidden.shape[0]))
    return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(hidden)


def reconstruct(params: dict, rows: torch.Tensor, k: float) -> torch.Tensor:
    """The training SAE's forward pass with decoder-norm rescaling."""
    norms = params["W_dec"].norm(dim=1)
    hidden = ((rows - params["b_dec"]) @ params["W_enc"] + params["b_enc"]) * norms
    acts = batch_topk(hidden, k)
    return (acts / norms) @ params["W_dec"] + params["b_dec"]


def initial_params(d_meta: int, d_in: int, generator: torch.Generator) -> dict:
    """Kaiming-uniform decoder rows scaled to norm 0.1; encoder = transpose."""
    bound = math.sqrt(2.0) * math.sqrt(3.0 / d_in)
    rows = (torch.rand(d_meta, d_in, generator=generator) * 2 - 1) * bound
    rows = 0.1 * rows / rows.norm(dim=1, keepdim=True)
    return {
        "W_enc": rows.T.clone(),
        "b_enc": torch.zeros(d_meta),
        "W_dec": rows,
        "b_dec": torch.zeros(d_in),
    }


def train(
    data: torch.Tensor,
    params: dict,
    batches,
    *,
    k: float = 4,
    lr: float = 5e-4,
    clip: float = 1.0,
) -> dict:
    """Adam on the summed-over-d_in squared error, one step per index batch."""
    params = {name: p.detach().clone().requires_grad_() for name, p in params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    for index in batches:
        rows = data[index]
        loss = (reconstruct(params, rows, k) - rows).pow(2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        optimizer.step()
    return {name: p.detach() for name, p in params.items()}


@torch.no_grad()
def fraction_variance_explained(
    params: dict, data: torch.Tensor, k: float = 4, eval_batch_size: int = 4096
) -> float:
    """SAEBench's score: BatchTopK per evaluation batch, centred total variance."""
    mean = data.mean(0)
    residual = total = 0.0
    for start in range(0, len(data), eval_batch_size):
        rows = data[start : start + eval_batch_size]
        residual += float((rows - reconstruct(params, rows, k)).pow(2).sum())
        total += float((rows - mean).pow(2).sum())
    return 1.0 - residual / total


def saebench_meta_fve(
    data: torch.Tensor,
    seed: int,
    *,
    width_ratio: float = 0.25,
    k: int = 4,
    steps: int = 1500,
    batch_size: int = 1024,
    lr: float = 5e-4,
) -> float:
    """The whole eval with its own random init and with-replacement batches."""
    generator = torch.Generator().manual_seed(seed)
    d_meta = max(math.ceil(len(data) * width_ratio), k)
    params = initial_params(d_meta, data.shape[1], generator)
    batches = (
        torch.randint(len(data), (batch_size,), generator=generator)
        for _ in range(steps)
    )
    params = train(data, params, batches, k=k, lr=lr)
    return fraction_variance_explained(params, data, k)
