"""First-letter probes trained the way SAEBench trains them.

``absorption.probe_training = "saebench"`` (set by ``--preset saebench``)
replaces our exact probe fits with SAEBench's training procedure, read from
``sae_bench/evals/absorption/{probing,k_sparse_probing,common}.py``
(SAEBench commit 8042bb38); this is our own implementation of it:

* **ground-truth probe** (SAEBench's ``train_and_save_probes`` defaults): one
  linear layer with an output per letter (26: SAEBench always trains every
  letter), started as ``torch.nn.Linear`` starts (weights and bias uniform in
  ``±1/sqrt(d_in)``), trained by Adam with weight decay ``1e-4`` (added to the
  gradient, bias included) for 50 epochs of shuffled mini-batches of 64 rows
  (the last one short), the learning rate ``1e-2`` decayed exponentially per
  epoch towards ``1e-5``; the loss is the binary cross-entropy with logits,
  each letter's positives weighted ``n_negative / n_positive`` over the whole
  training set, averaged over the batch's rows *and* the 26 outputs; on the
  raw SAE input (no centring or scaling);
* **latent ranking** (``train_sparse_multi_probe``): the same on the SAE's
  codes, mini-batches of 4,096 rows, weight decay ``1e-6``, plus
  ``0.01 x`` the mean over outputs of ``||w||_1`` (not the bias), for
  ``k_sparse_probe_num_epochs`` epochs (50; ``sparse_probe_epochs``); the
  top-``k`` latents of a letter are those of largest *signed* weight;
* **k-sparse probes**: scikit-learn's ``LogisticRegression(C=1,
  class_weight="balanced")`` on the raw codes of the ``k`` latents, i.e. the
  minimiser of ``sum_i c_i logloss_i + ||w||^2 / 2`` with
  ``c_i = n / (2 n_class(i))`` and an unpenalised bias, found here exactly by
  Newton's method (:func:`.probes.fit_weighted_sparse_probes`).

The only random parts are the start and the batch order, drawn from a
seeded ``torch.Generator`` (SAEBench draws them from torch's global stream:
same distributions, different draws).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .probes import LinearProbes, fit_weighted_sparse_probes

#: SAEBench trains one output per letter of the alphabet; its loss and L1
#: term are means over them, which sets the weight decay's relative size.
SAEBENCH_OUTPUTS = 26


@dataclass(frozen=True)
class AdamSchedule:
    """SAEBench's probe training: Adam, exponential decay per epoch."""

    epochs: int
    batch_size: int
    lr: float
    end_lr: float
    weight_decay: float
    l1: float = 0.0


#: ``train_and_save_probes`` / ``train_linear_probe_for_task`` defaults.
GROUND_TRUTH_SCHEDULE = AdamSchedule(
    epochs=50, batch_size=64, lr=1e-2, end_lr=1e-5, weight_decay=1e-4
)


def ranking_schedule(epochs: int = 50) -> AdamSchedule:
    """``train_sparse_multi_probe`` at SAEBench's absorption defaults
    (``k_sparse_probe_batch_size`` 4096, ``k_sparse_probe_l1_decay`` 0.01)."""
    return AdamSchedule(
        epochs=epochs, batch_size=4096, lr=1e-2, end_lr=1e-5, weight_decay=1e-6, l1=0.01
    )


class DenseInputs:
    """Rows of a dense ``[n, f]`` matrix as probe inputs."""

    def __init__(self, x: torch.Tensor):
        self.x = x.float()
        self.n_rows, self.n_features = self.x.shape

    def logits(self, rows, weight, bias):
        """``x[rows] @ weight.T + bias``."""
        return self.x[rows] @ weight.T + bias

    def weight_grad(self, rows, grad_logits):
        """``d loss / d weight`` from ``d loss / d logits`` ``[b, p]``."""
        return grad_logits.T @ self.x[rows]


class SlotInputs:
    """Sparse rows held as ``[n, slots]`` feature ids (``-1``: empty) and
    values, e.g. an SAE's non-zero codes, over ``n_features`` features."""

    def __init__(self, ids: torch.Tensor, values: torch.Tensor, n_features: int):
        used = ids >= 0
        # empty slots point at an extra, always-zero feature
        self.ids = torch.where(used, ids, n_features)
        self.values = torch.where(used, values.float(), 0.0)
        self.n_rows = ids.shape[0]
        self.n_features = n_features

    def logits(self, rows, weight, bias):
        """Sum over a row's slots of value x its feature's weights, + bias."""
        padded = torch.cat([weight.T, weight.new_zeros(1, weight.shape[0])])
        picked = padded[self.ids[rows]]  # [b, slots, p]
        return (picked * self.values[rows, :, None]).sum(1) + bias

    def weight_grad(self, rows, grad_logits):
        """``d loss / d weight`` ``[p, f]`` by scattering over the slots."""
        ids = self.ids[rows].reshape(-1)
        spread = (self.values[rows, :, None] * grad_logits[:, None, :]).reshape(
            -1, grad_logits.shape[1]
        )
        grad = grad_logits.new_zeros(self.n_features + 1, grad_logits.shape[1])
        grad.index_add_(0, ids, spread)
        return grad[:-1].T


def train_adam_probes(
    inputs,
    labels: torch.Tensor,
    schedule: AdamSchedule,
    generator: torch.Generator,
    *,
    n_outputs: int = SAEBENCH_OUTPUTS,
) -> LinearProbes:
    """One-vs-rest probes ``[p, f]`` on ``inputs`` (:class:`DenseInputs` or
    :class:`SlotInputs`) for ``[n, p]`` bool ``labels``, trained as SAEBench's
    ``train_multi_probe`` trains them (see the module docstring).

    Losses are averaged over ``n_outputs`` outputs, of which ``p`` are
    trained here (the others are independent of them under Adam).
    """
    n, p = labels.shape
    if p > n_outputs:
        raise ValueError(f"{p} probes but the loss averages over {n_outputs}")
    targets = labels.float()
    n_positive = targets.sum(0)
    if bool((n_positive == 0).any()):
        raise ValueError("every probe needs positive rows (SAEBench's weight is n/0)")
    pos_weight = (n - n_positive) / n_positive
    bound = 1.0 / math.sqrt(inputs.n_features)
    weight = (torch.rand(p, inputs.n_features, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(p, generator=generator) * 2 - 1) * bound
    optimizer = torch.optim.Adam(
        [weight, bias], lr=schedule.lr, weight_decay=schedule.weight_decay
    )
    gamma = math.exp(math.log(schedule.end_lr / schedule.lr) / schedule.epochs)
    for epoch in range(schedule.epochs):
        optimizer.param_groups[0]["lr"] = schedule.lr * gamma**epoch
        order = torch.randperm(n, generator=generator)
        for rows in order.split(schedule.batch_size):
            y = targets[rows]
            probability = torch.sigmoid(inputs.logits(rows, weight, bias))
            # d/dl of -(w y log s(l) + (1 - y) log(1 - s(l))), averaged
            grad = (pos_weight * y * (probability - 1) + (1 - y) * probability) / (
                len(rows) * n_outputs
            )
            weight.grad = inputs.weight_grad(rows, grad)
            if schedule.l1:
                weight.grad += (schedule.l1 / n_outputs) * torch.sign(weight)
            bias.grad = grad.sum(0)
            optimizer.step()
    return LinearProbes(weight.detach(), bias.detach())


def saebench_ranking(
    inputs: SlotInputs,
    labels: torch.Tensor,
    max_k: int,
    epochs: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per letter, the ``max_k`` latents of largest signed weight in
    SAEBench's L1 probe on the codes: ``[p, max_k]`` latent ids, best first."""
    probes = train_adam_probes(inputs, labels, ranking_schedule(epochs), generator)
    return probes.weight.topk(min(max_k, inputs.n_features), dim=1).indices


def fit_sklearn_sparse_probes(x: torch.Tensor, labels: torch.Tensor) -> LinearProbes:
    """SAEBench's k-sparse probes: scikit-learn's ``LogisticRegression(C=1,
    class_weight="balanced")`` optimum on ``x`` ``[p, n, k]`` per probe
    (``labels`` ``[n, p]`` bool), on the raw inputs."""
    y = labels.double().T  # [p, n]
    n = y.shape[1]
    n_positive = y.sum(1, keepdim=True)
    # scikit-learn's objective divided by n (the same minimiser), so that
    # the solver's gradient tolerance is relative to a mean loss
    balanced = torch.where(
        y > 0, 1 / (2 * n_positive), 1 / (2 * (n - n_positive).clamp_min(1))
    )
    return fit_weighted_sparse_probes(x, balanced, balanced * y, l2=0.5 / n)
