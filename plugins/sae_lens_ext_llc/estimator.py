"""``estimate_llc``: the local learning coefficient of any torch module.

LLC = nbeta * (E_w[L(w)] - L(w*)), the expectation over the localised
tempered posterior around w*, sampled by SGLD (Lau, Furman, Wang, Murfet,
Wei 2023).  All chains run as one batched computation (see ``sampler``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .convergence import effective_sample_size
from .curvature import CurvatureReport, lowest_hessian_eigenvalue
from .data import Data, chunks, num_rows, take_rows, to_device
from .diagnostics import (
    MIN_ACCEPTANCE,
    ChainEvidence,
    LLCDiagnostics,
    diagnose,
    exploded_chains,
)
from .sampler import (
    ChainSettings,
    ChainTraces,
    LossModule,
    autocast_context,
    sample_chains,
)
from .threads import choose_threads, thread_limit


def default_nbeta(batch_size: int) -> float:
    """m / log m for minibatch size m, devinterp's default inverse temperature.

    With full-batch sampling m is the dataset size n and this is n * beta*
    with beta* = 1 / log n, the Watanabe temperature of WBIC.
    """
    return batch_size / math.log(batch_size) if batch_size > 1 else 1.0


@dataclass
class LLCResult:
    """An LLC estimate with its spread, traces and diagnostics.

    ``llc`` is the mean of the per-chain estimates of healthy chains and
    ``llc_se`` their standard error (std / sqrt(chains)).  ``trace`` has one
    row per chain and step: ``chain``, ``step``, ``burn_in``, ``loss``,
    ``llc`` (nbeta * (loss - L(w*))), ``distance`` (|w - w*|) and, when
    tracked, ``acceptance`` (the MALA acceptance probability of that step).
    ``calibration`` is the ``CalibrationResult`` that chose the settings,
    when one did (``estimate_sae_llc``).
    """

    llc: float
    llc_se: float
    llc_per_chain: np.ndarray
    init_loss: float
    n_params: int
    settings: dict[str, Any]
    diagnostics: LLCDiagnostics
    trace: pd.DataFrame
    seconds: float = 0.0
    calibration: Any = None

    @property
    def llc_std(self) -> float:
        """Standard deviation of the per-chain estimates."""
        finite = self.llc_per_chain[np.isfinite(self.llc_per_chain)]
        return float(finite.std(ddof=1)) if finite.size > 1 else float("nan")

    def summary(self) -> dict[str, Any]:
        """Flat, JSON-serialisable headline numbers and settings."""
        diag = self.diagnostics
        return {
            "llc": self.llc,
            "llc_se": self.llc_se,
            "llc_std": self.llc_std,
            "init_loss": self.init_loss,
            "n_params": self.n_params,
            "r_hat": diag.r_hat,
            "ess": diag.ess,
            "geweke_z": diag.geweke_z,
            "diverged_chains": len(diag.diverged_chains),
            "acceptance": diag.acceptance,
            "stationary": diag.stationary,
            "lowest_hessian_eigenvalue": None
            if diag.curvature is None
            else diag.curvature.lowest,
            "ok": diag.ok,
            "flags": ",".join(diag.flags),
            "seconds": self.seconds,
            **self.settings,
        }

    def per_chain_table(self) -> pd.DataFrame:
        """One row per chain: its estimate, mean loss and whether it diverged."""
        draws = self.trace[~self.trace["burn_in"]]
        table = draws.groupby("chain").agg(
            mean_loss=("loss", "mean"), mean_distance=("distance", "mean")
        )
        table["llc"] = self.llc_per_chain
        table["diverged"] = [
            c in self.diagnostics.diverged_chains for c in range(len(table))
        ]
        return table.reset_index()

    def trace_plot(self):
        """Per-chain LLC and distance traces (a matplotlib Figure)."""
        from .plots import trace_plot

        return trace_plot(self)

    def __str__(self) -> str:
        lines = [
            f"LLC = {self.llc:.4g} ± {self.llc_se:.2g} (SE over "
            f"{len(self.llc_per_chain)} chains; d/2 = {self.n_params / 2:g})",
            f"L(w*) = {self.init_loss:.6g}, R-hat {self.diagnostics.r_hat:.3f}, "
            f"ESS {self.diagnostics.ess:.0f}",
        ]
        lines += self.diagnostics.messages() or ["diagnostics: all checks passed"]
        return "\n".join(lines)


@dataclass
class Problem:
    """A validated estimation problem: the model as a loss, w*, data and L(w*)."""

    loss_module: LossModule
    anchor: dict[str, torch.Tensor]
    data: Data
    n_rows: int
    batch_size: int
    init_loss: float
    init_grad_norm: float
    autocast_dtype: torch.dtype | None
    batch_loss_sd: float = 0.0
    curvature: CurvatureReport | None = None

    @property
    def n_params(self) -> int:
        """Number of sampled parameters d."""
        return sum(p.numel() for p in self.anchor.values())

    def threads(self, requested: int | None) -> int:
        """CPU threads to sample with (see :func:`.threads.choose_threads`)."""
        device = next(iter(self.anchor.values())).device
        return choose_threads(requested, self.n_params, self.batch_size, device)

    def check_curvature(self, seed: int) -> CurvatureReport:
        """The Lanczos report of the Hessian at w* (computed once, then kept)."""
        if self.curvature is None:
            self.curvature = lowest_hessian_eigenvalue(
                self.loss_module,
                self.anchor,
                self.data,
                self.n_rows,
                self.batch_size,
                seed=seed,
                autocast_dtype=self.autocast_dtype,
            )
        return self.curvature

    def sample(
        self,
        settings: ChainSettings,
        num_steps: int,
        seed: int,
        progress: bool,
        track_acceptance: bool = False,
    ) -> ChainTraces:
        """Run the chains of ``settings`` from w* for ``num_steps`` SGLD steps."""
        return sample_chains(
            self.loss_module,
            self.anchor,
            self.data,
            self.n_rows,
            settings,
            num_steps=num_steps,
            batch_size=self.batch_size,
            seed=seed,
            autocast_dtype=self.autocast_dtype,
            progress=progress,
            track_acceptance=track_acceptance,
        )


def _check_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"loss_fn(model, batch) must return a scalar torch tensor, got "
            f"{type(loss).__name__}; return e.g. criterion(model(x), y)"
        )
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn(model, batch) returned a tensor of shape {tuple(loss.shape)}, "
            "not a scalar; reduce it over the batch with .mean()"
        )
    if not torch.isfinite(loss).all():
        raise ValueError(
            f"the loss at w* is {loss.item()}: the model or the data give a "
            "non-finite loss before sampling starts; check the inputs"
        )
    return loss.reshape(())


def prepare_problem(
    model: nn.Module,
    loss_fn: Callable,
    data: Data,
    batch_size: int | None,
    autocast_dtype: torch.dtype | None,
) -> Problem:
    """Validate the inputs, then compute L(w*) and |grad L(w*)| on all data,
    and the spread of the loss over minibatches of ``batch_size`` rows."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; wrap "
            "plain functions in a module with nn.Parameter weights"
        )
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(model, batch) -> scalar")
    sampled = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not sampled:
        raise ValueError(
            "no parameter of the model requires grad, so there is nothing to "
            "sample; call model.requires_grad_(True), or unfreeze the parameters "
            "whose LLC you want"
        )
    n_rows = num_rows(data)
    batch_size = n_rows if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = min(batch_size, n_rows)
    device = next(iter(sampled.values())).device
    data = to_device(data, device)
    params = list(sampled.values())
    total_loss, total_grad = 0.0, [torch.zeros_like(p) for p in params]
    chunk_losses = []
    for index in chunks(n_rows, batch_size):
        with autocast_context(device, autocast_dtype):
            loss = _check_loss(loss_fn(model, take_rows(data, index)))
        grads = torch.autograd.grad(loss.float(), params, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError(
                "the loss does not depend on any parameter that requires grad; "
                "loss_fn must compute the loss with the model passed to it"
            )
        weight = index.numel() / n_rows
        total_loss += loss.item() * weight
        if index.numel() == batch_size:
            chunk_losses.append(loss.item())
        for acc, g in zip(total_grad, grads, strict=True):
            if g is not None:
                acc.add_(g.float(), alpha=weight)
    grad_norm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in total_grad)))
    anchor = {f"model.{name}": p.detach().clone() for name, p in sampled.items()}
    return Problem(
        loss_module=LossModule(model, loss_fn),
        anchor=anchor,
        data=data,
        n_rows=n_rows,
        batch_size=batch_size,
        init_loss=total_loss,
        init_grad_norm=grad_norm,
        autocast_dtype=autocast_dtype,
        batch_loss_sd=float(np.std(chunk_losses, ddof=1))
        if len(chunk_losses) > 1
        else 0.0,
    )


def check_sampler_options(
    num_chains: int, num_draws: int, num_burnin: int, step_size, nbeta, localization
) -> None:
    """Raise ValueError on counts or hyperparameters outside their range."""
    for name, value, low in (
        ("num_chains", num_chains, 1),
        ("num_draws", num_draws, 1),
        ("num_burnin", num_burnin, 0),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    for name, values, strict in (
        ("step_size", step_size, True),
        ("nbeta", nbeta, True),
        ("localization", localization, False),
    ):
        for value in np.atleast_1d(values):
            if value is None:
                continue
            if not np.isfinite(value) or value < 0 or (strict and value == 0):
                relation = "> 0" if strict else ">= 0"
                raise ValueError(f"{name} must be finite and {relation}, got {value}")


def settings_record(problem: Problem, **settings) -> dict[str, Any]:
    """``settings`` plus the problem's batch size, sample count and autocast."""
    autocast = problem.autocast_dtype
    return {
        **settings,
        "batch_size": problem.batch_size,
        "n_samples": problem.n_rows,
        "autocast": str(autocast).removeprefix("torch.") if autocast else "none",
    }


def summarise_chains(
    problem: Problem,
    traces: ChainTraces,
    chains: slice,
    *,
    settings: dict[str, Any],
    seconds: float,
    min_acceptance: float = MIN_ACCEPTANCE,
) -> LLCResult:
    """The estimate, trace table and diagnostics of the chains ``chains``,
    sampled with ``settings`` (a :func:`settings_record`)."""
    num_burnin, nbeta = settings["num_burnin"], settings["nbeta"]
    loss = traces.loss[chains].numpy()
    distance = traces.distance[chains].numpy()
    llc_trace = nbeta * (loss - problem.init_loss)
    evidence = ChainEvidence(
        llc_trace=llc_trace,
        loss_trace=loss,
        distance_trace=distance,
        num_burnin=num_burnin,
        init_loss=problem.init_loss,
        init_grad_norm=problem.init_grad_norm,
        n_params=problem.n_params,
        nbeta=nbeta,
        step_size=settings["step_size"],
        localization=settings["localization"],
        acceptance_trace=None
        if traces.acceptance is None
        else traces.acceptance[chains].numpy(),
        batch_loss_sd=problem.batch_loss_sd,
        curvature=problem.curvature,
        min_acceptance=min_acceptance,
    )
    bad = set(exploded_chains(evidence))
    healthy = [c for c in range(loss.shape[0]) if c not in bad]
    per_chain = llc_trace[:, num_burnin:].mean(axis=1)
    per_chain[list(bad)] = np.nan
    kept = per_chain[healthy]
    llc = float(kept.mean()) if kept.size else float("nan")
    if kept.size > 1:
        llc_se = float(kept.std(ddof=1) / math.sqrt(kept.size))
    elif kept.size == 1:
        draws = llc_trace[healthy[0], num_burnin:]
        llc_se = float(
            draws.std(ddof=1) / math.sqrt(effective_sample_size(draws[None]))
        )
    else:
        llc_se = float("nan")
    diagnostics = diagnose(evidence, llc, llc_se, healthy)
    n_chains, n_steps = loss.shape
    trace = pd.DataFrame(
        {
            "chain": np.repeat(np.arange(n_chains), n_steps),
            "step": np.tile(np.arange(n_steps), n_chains),
            "burn_in": np.tile(np.arange(n_steps) < num_burnin, n_chains),
            "loss": loss.reshape(-1),
            "llc": llc_trace.reshape(-1),
            "distance": distance.reshape(-1),
        }
    )
    if traces.acceptance is not None:
        trace["acceptance"] = traces.acceptance[chains].numpy().reshape(-1)
    return LLCResult(
        llc=llc,
        llc_se=llc_se,
        llc_per_chain=per_chain,
        init_loss=problem.init_loss,
        n_params=problem.n_params,
        settings=settings,
        diagnostics=diagnostics,
        trace=trace,
        seconds=seconds,
    )


def estimate_llc(
    model: nn.Module,
    loss_fn: Callable,
    data: Data,
    *,
    num_chains: int = 4,
    num_draws: int = 200,
    num_burnin: int = 50,
    step_size: float = 1e-4,
    nbeta: float | None = None,
    localization: float = 1.0,
    batch_size: int | None = None,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    track_acceptance: bool = True,
    min_acceptance: float = MIN_ACCEPTANCE,
    check_curvature: bool | CurvatureReport = True,
    threads: int | None = None,
    progress: bool = True,
) -> LLCResult:
    """Estimate the local learning coefficient of ``model`` at its current weights.

    ``loss_fn(model, batch)`` returns the mean loss (a scalar tensor) of the
    model on ``batch``, a set of rows of ``data`` (a tensor, tuple/list or
    dict of tensors with rows along dim 0).  Every parameter that requires
    grad is sampled; the others stay fixed.  The current weights are w*.

    Each of ``num_chains`` SGLD chains takes ``num_burnin + num_draws`` steps
    of size ``step_size`` on minibatches of ``batch_size`` rows (None: all
    rows), at inverse temperature ``nbeta`` (None: m / log m for minibatch
    size m) with a Gaussian pull of strength ``localization`` towards w*.
    The estimate averages nbeta * (L(w) - L(w*)) over the draws after
    burn-in; L(w*) is the loss on all of ``data``.  ``autocast_dtype``
    (e.g. ``torch.bfloat16``) runs forward and backward passes under
    autocast while the chains' weights stay in float32.
    ``track_acceptance`` records the MALA acceptance rate of the steps (the
    discretisation check, failed below ``min_acceptance``); ``check_curvature`` finds the lowest Hessian
    eigenvalue at w* by Lanczos (the saddle check; a report from an earlier
    check of the same w*, e.g. ``calibrate_llc``'s, is reused); ``threads`` is the CPU
    thread count (None: one for small problems or on a busy machine).
    Don't know which step size to use?  ``calibrate_llc`` finds one.
    """
    check_sampler_options(
        num_chains, num_draws, num_burnin, step_size, nbeta, localization
    )
    started = time.perf_counter()
    problem = prepare_problem(model, loss_fn, data, batch_size, autocast_dtype)
    nbeta = default_nbeta(problem.batch_size) if nbeta is None else float(nbeta)
    settings = ChainSettings(
        step_size=torch.full((num_chains,), float(step_size), dtype=torch.float64),
        nbeta=torch.full((num_chains,), nbeta, dtype=torch.float64),
        localization=torch.full(
            (num_chains,), float(localization), dtype=torch.float64
        ),
    )
    with thread_limit(problem.threads(threads)):
        if isinstance(check_curvature, CurvatureReport):
            problem.curvature = check_curvature
        elif check_curvature:
            problem.check_curvature(seed)
        traces = problem.sample(
            settings, num_burnin + num_draws, seed, progress, track_acceptance
        )
    return summarise_chains(
        problem,
        traces,
        slice(None),
        settings=settings_record(
            problem,
            num_chains=num_chains,
            num_draws=num_draws,
            num_burnin=num_burnin,
            step_size=float(step_size),
            nbeta=nbeta,
            localization=float(localization),
            seed=seed,
        ),
        seconds=time.perf_counter() - started,
        min_acceptance=min_acceptance,
    )
