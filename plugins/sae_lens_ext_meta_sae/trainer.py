"""A BatchTopK SAE trained on one small in-memory matrix, gradients by hand.

The model is the usual one with a unit-norm decoder::

    pre   = (x - b_dec) @ W_enc + b_enc
    a     = BatchTopK_k(pre)                 # k * batch entries kept
    x_hat = a @ W_dec + b_dec
    loss  = mean over rows of ||x_hat - x||^2

Only the encoder product is dense.  The decoder product, and every
gradient, touch only the kept entries: with ``S`` the sparse matrix of kept
activations and ``g = 2 (x_hat - x) / n``,

    dW_dec = S.T @ g,   da = (g @ W_dec.T)[kept],   dW_enc.T = dA.T @ (x - b_dec),
    db_enc = column sums of dA,   db_dec = sum(g) - W_enc @ db_enc,

where ``dA`` holds ``da`` on the kept entries.  The decoder gradient loses its
component along each row (the rows stay on the unit sphere) and the rows
are renormalised after each Adam step.  Dead latents are re-initialised on
the residuals of the worst-reconstructed rows.

With ``decoder_norm="rescaled"`` (SAE-Lens's ``rescale_acts_by_decoder_norm``)
the decoder parameter ``V`` keeps free row norms ``n``: the model uses the
unit rows ``U = V / n`` and scales the pre-activations by ``n`` before the
selection.  With ``dU = S.T @ g`` and ``dn_j = sum_i da_ij a_ij / n_j``
(through the scaled pre-activations),

    dV_j = (dU_j - (dU_j . U_j) U_j) / n_j + dn_j U_j,

and the encoder's gradients take ``dA * n`` in place of ``dA``.  The saved
weights fold ``n`` into the encoder, as SAE-Lens does when it saves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from sae_lens_ext import machine_is_busy, thread_limit

from .batchtopk import Selection, TopValues, batch_topk, threshold_select
from .config import MetaSAEConfig

ENCODE_CHUNK = 4096
#: Candidates for a batch's top entries: those above this fraction of the
#: previous batch's cut-off (the selection stays exact; see ``batch_topk``).
HINT_MARGIN = 0.85
#: Below this many multiply-adds per encoder pass, one thread is faster.
SMALL_PROBLEM = 2**26


@dataclass
class MetaSAEWeights:
    """The trained weights (decoder rows unit-norm) and inference threshold."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: float = 0.0

    @property
    def d_meta(self) -> int:
        """Number of meta-latents."""
        return self.W_dec.shape[0]


@dataclass
class TrainingLog:
    """What happened during training."""

    rows: int = 0
    losses: list[float] = field(default_factory=list)
    resampled: int = 0
    seconds: float = 0.0


class MetaSAETrainer:
    """Trains a BatchTopK SAE on ``data`` ``[n, d]`` (rows are the samples)."""

    def __init__(
        self,
        data: torch.Tensor,
        d_meta: int,
        config: MetaSAEConfig,
        row_weights: torch.Tensor | None = None,
    ):
        self.data = data.float().contiguous()
        # trains where the data lives; random draws come from a CPU generator
        # (moved to the device) so every device sees the same stream
        self.device = self.data.device
        self.row_weights = check_row_weights(row_weights, self.data.shape[0])
        self.config = config
        self.generator = torch.Generator().manual_seed(int(config.seed or 0))
        n, d = self.data.shape
        self.batch_size = int(config.batch_size)
        if config.sampling != "replacement":  # an epoch cannot hold more rows
            self.batch_size = min(self.batch_size, n)
        self.n_keep = max(1, round(config.k * self.batch_size))
        self.rescaled = config.decoder_norm == "rescaled"
        directions = _unit_rows(
            torch.randn(d_meta, d, generator=self.generator).to(self.device)
        )
        self.W_dec = directions * float(config.decoder_init_norm)
        self.W_enc_T = self.W_dec.clone()
        self.b_enc = torch.zeros(d_meta, device=self.device)
        self.b_dec = (
            self.data.mean(0)
            if config.b_dec_init == "mean"
            else torch.zeros(d, device=self.device)
        )
        self.params = [self.W_enc_T, self.b_enc, self.W_dec, self.b_dec]
        for p in self.params:
            p.grad = torch.zeros_like(p)
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, fused=True)
        self.steps_since_fired = torch.zeros(
            d_meta, dtype=torch.long, device=self.device
        )
        self.threshold_ema = 0.0
        self.last_cutoff = 0.0
        self.log = TrainingLog(rows=n)

    def fit(self, progress: bool = True) -> MetaSAEWeights:
        """Run ``config.steps`` steps; return the weights with the threshold."""
        with thread_limit(self.threads()):
            return self._fit(progress)

    def threads(self) -> int:
        """CPU threads to train with (see ``MetaSAEConfig.threads``)."""
        if self.config.threads is not None:
            return int(self.config.threads)
        work = self.batch_size * self.data.shape[1] * self.W_dec.shape[0]
        if work < SMALL_PROBLEM or machine_is_busy():
            return 1
        return torch.get_num_threads()

    def _fit(self, progress: bool) -> MetaSAEWeights:
        started = time.perf_counter()
        steps = int(self.config.steps)
        batches = self._batches()
        resample_until = int(self.config.resample_until * steps)
        bar = tqdm(range(steps), desc="meta-SAE", disable=not progress, leave=False)
        for step in bar:
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(step)
            loss = self.step(*next(batches))
            self.log.losses.append(loss)
            if step % 50 == 0:
                bar.set_postfix(mse=f"{loss:.4f}")
            every = int(self.config.resample_every)
            if every > 0 and 0 < step + 1 < resample_until and (step + 1) % every == 0:
                self.resample_dead()
        self.log.seconds = time.perf_counter() - started
        return self.weights()

    def step(self, x: torch.Tensor, x_low: torch.Tensor | None = None) -> float:
        """One Adam step on batch ``x``; return the batch's mean squared error.

        ``x_low`` is the same batch in bfloat16, used by the encoder when
        autocast is on (made here when not given).
        """
        loss, selection = self.gradients(x, x_low)
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, float(self.config.grad_clip))
        self.optimizer.step()
        if not self.rescaled:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))
        self._track(selection)
        return loss

    def gradients(
        self, x: torch.Tensor, x_low: torch.Tensor | None = None
    ) -> tuple[float, Selection]:
        """Set every parameter's ``.grad`` for batch ``x``; return (loss, kept).

        The decoder gradient is projected onto the tangent space of the unit
        sphere (its radial part would be undone by the renormalisation); with
        rescaled rows it is the chain rule through ``V / n`` and ``pre * n``.
        """
        n = x.shape[0]
        norms = self.W_dec.norm(dim=1) if self.rescaled else None
        unit = self.W_dec if norms is None else self.W_dec / norms[:, None]
        pre = self._pre(x, x_low)
        if norms is not None:
            pre = pre * norms.to(pre.dtype)
        selection = batch_topk(pre, self.n_keep, self._hint())
        error = selection.times(unit)
        error.add_(self.b_dec).sub_(x)
        loss = float(torch.dot(error.view(-1), error.view(-1))) / n
        g = error.mul_(2.0 / n)
        grad_act = selection.sampled_products(g, unit)
        grad_unit = selection.transposed_times(g)
        tangent = grad_unit - (grad_unit * unit).sum(1, keepdim=True) * unit
        grad_pre = grad_act
        if norms is None:
            self.W_dec.grad = tangent
        else:
            grad_norm = self._column_sums(selection, grad_act * selection.values)
            grad_norm /= norms
            self.W_dec.grad = tangent / norms[:, None] + grad_norm[:, None] * unit
            grad_pre = grad_act * norms[selection.cols]
        self.b_enc.grad = self._column_sums(selection, grad_pre)
        # the encoder sees x - b_dec: its gradient is dA.T @ x - db_enc b_dec^T
        self.W_enc_T.grad = selection.transposed_times(x, grad_pre)
        self.W_enc_T.grad.sub_(torch.outer(self.b_enc.grad, self.b_dec))
        self.b_dec.grad = g.sum(0) - self.b_enc.grad @ self.W_enc_T
        return loss, selection

    def _column_sums(self, selection: Selection, values: torch.Tensor):
        """Per meta-latent, the sum of ``values`` over its kept entries."""
        return torch.bincount(
            selection.cols, weights=values, minlength=self.b_enc.numel()
        ).float()

    def _pre(self, x: torch.Tensor, x_low: torch.Tensor | None) -> torch.Tensor:
        """Encoder pre-activations, in bfloat16 when autocast is on."""
        bias = self.b_enc - self.W_enc_T @ self.b_dec
        if self.config.autocast:
            bf16 = torch.bfloat16
            x_low = x.to(bf16) if x_low is None else x_low
            return torch.addmm(bias.to(bf16), x_low, self.W_enc_T.to(bf16).T)
        return torch.addmm(bias, x, self.W_enc_T.T)

    def _hint(self) -> float:
        """A value expected below this batch's cut-off (0: rank everything)."""
        return HINT_MARGIN * self.last_cutoff

    def _track(self, selection: Selection) -> None:
        self.steps_since_fired += 1
        self.steps_since_fired[selection.fired()] = 0
        if selection.nnz:
            self.last_cutoff = float(selection.values.min())
            self.threshold_ema += 0.01 * (self.last_cutoff - self.threshold_ema)

    def _lr(self, step: int) -> float:
        steps, fraction = int(self.config.steps), self.config.lr_decay_fraction
        decay_start = steps * (1 - fraction)
        if fraction <= 0 or step < decay_start:
            return self.config.lr
        return self.config.lr * max(0.0, (steps - step) / (steps - decay_start))

    def _batches(self):
        """Shuffled batches ``(x, x in bfloat16 or None)``, epoch after epoch."""
        n, d = self.data.shape
        low = self.data.to(torch.bfloat16) if self.config.autocast else None
        buffer = torch.empty(self.batch_size, d, device=self.device)
        low_buffer = torch.empty(
            self.batch_size, d, dtype=torch.bfloat16, device=self.device
        )
        while True:
            for drawn in self._batch_indices(n):
                index = drawn.to(self.device)
                torch.index_select(self.data, 0, index, out=buffer)
                if low is None:
                    yield buffer, None
                else:
                    yield buffer, torch.index_select(low, 0, index, out=low_buffer)

    def _batch_indices(self, n: int):
        """One epoch of row indices per batch: a shuffle, or draws with
        replacement (uniform, or weighted by ``row_weights``)."""
        if self.config.sampling == "replacement":
            for _ in range(max(1, n // self.batch_size)):
                yield torch.randint(n, (self.batch_size,), generator=self.generator)
            return
        if self.row_weights is not None:
            for _ in range(max(1, n // self.batch_size)):
                yield torch.multinomial(
                    self.row_weights,
                    self.batch_size,
                    replacement=True,
                    generator=self.generator,
                )
            return
        order = torch.randperm(n, generator=self.generator)
        for start in range(0, n - self.batch_size + 1, self.batch_size):
            yield order[start : start + self.batch_size]

    @torch.no_grad()
    def resample_dead(self) -> int:
        """Re-initialise dead latents on the residuals of badly fit rows."""
        dead = torch.nonzero(self.steps_since_fired >= self.config.dead_after)
        dead = dead.squeeze(1)
        if dead.numel() == 0:
            return 0
        weights = self.weights(threshold=self.threshold_ema)
        residual = self.data - reconstruct(weights, self.data)
        squared = residual.pow(2).sum(1)
        if float(squared.sum()) <= 0:
            return 0
        rows = torch.multinomial(
            squared.cpu(),
            dead.numel(),
            replacement=dead.numel() > len(squared),
            generator=self.generator,
        ).to(self.device)
        directions = _unit_rows(residual[rows])
        alive = self.steps_since_fired < self.config.dead_after
        encoder_norm = decoder_norm = 1.0
        if bool(alive.any()):
            encoder_norm = self.W_enc_T[alive].norm(dim=1).mean()
            if self.rescaled:  # a new row at the others' scale, as its encoder
                decoder_norm = self.W_dec[alive].norm(dim=1).mean()
        self.W_dec[dead] = directions * decoder_norm
        self.W_enc_T[dead] = directions * encoder_norm
        self.b_enc[dead] = 0.0
        for p, index in ((self.W_dec, dead), (self.W_enc_T, dead), (self.b_enc, dead)):
            state = self.optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][index] = 0.0
        self.steps_since_fired[dead] = 0
        self.log.resampled += int(dead.numel())
        return int(dead.numel())

    def weights(self, threshold: float | None = None) -> MetaSAEWeights:
        """Current weights; the threshold is fitted on all data unless given."""
        norms = (
            self.W_dec.norm(dim=1)
            if self.rescaled
            else torch.ones(len(self.W_dec), device=self.device)
        )
        weights = MetaSAEWeights(
            W_enc=(self.W_enc_T * norms[:, None]).T.clone(),
            b_enc=self.b_enc * norms,
            W_dec=self.W_dec / norms[:, None],
            b_dec=self.b_dec.clone(),
        )
        weights.threshold = (
            global_threshold(weights, self.data, self.config.k)
            if threshold is None
            else float(threshold)
        )
        return weights


def check_row_weights(weights: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Sampling weights of the rows as float64, checked; None stays None."""
    if weights is None:
        return None
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if weights.numel() != n:
        raise ValueError(f"got {weights.numel()} row weights for {n} rows")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            "row weights must be finite, non-negative and not all zero; with "
            "sampling='frequency', leave dead latents out (skip_dead)"
        )
    return weights


def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pre_activations(weights: MetaSAEWeights, rows: torch.Tensor) -> torch.Tensor:
    """Encoder pre-activations ``[n, d_meta]`` in float32."""
    return torch.addmm(weights.b_enc, rows - weights.b_dec, weights.W_enc)


def global_threshold(weights: MetaSAEWeights, data: torch.Tensor, k: float) -> float:
    """The JumpReLU threshold that keeps ``k * n`` activations over all of data.

    This is BatchTopK with the whole matrix as one batch: the threshold lies
    halfway between the ``k n``-th and the next largest pre-activation, so
    ``pre > threshold`` keeps exactly the global top ``k n`` (ties aside).
    """
    n_keep = max(1, round(k * data.shape[0]))
    top = TopValues(n_keep + 1)
    for chunk in data.split(ENCODE_CHUNK):
        pre = pre_activations(weights, chunk)
        top.add(pre[pre > 0])
    values = top.sorted()
    if values.numel() <= n_keep:
        return 0.0
    return float((values[n_keep - 1] + values[n_keep]) / 2)


def encode_sparse(weights: MetaSAEWeights, data: torch.Tensor) -> list[Selection]:
    """Inference activations of every row, as one selection per chunk."""
    return [
        threshold_select(pre_activations(weights, chunk), weights.threshold)
        for chunk in data.split(ENCODE_CHUNK)
    ]


def reconstruct(weights: MetaSAEWeights, data: torch.Tensor) -> torch.Tensor:
    """Reconstruction of every row at inference (threshold) activations."""
    parts = [
        selection.times(weights.W_dec) + weights.b_dec
        for selection in encode_sparse(weights, data)
    ]
    return torch.cat(parts)
