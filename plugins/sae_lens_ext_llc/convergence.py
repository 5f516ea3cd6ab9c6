"""MCMC convergence statistics for per-draw LLC traces ``[chains, draws]``."""

from __future__ import annotations

import numpy as np


def autocorrelation_time(series: np.ndarray) -> float:
    """Integrated autocorrelation time of one chain (Geyer's initial sequence).

    Sums autocorrelations in adjacent pairs until a pair turns negative, with
    the pair sums forced non-increasing; at least 1 (never claims better than
    independent draws).
    """
    n = series.shape[0]
    centred = series - series.mean()
    variance = centred.var()
    if n < 4 or variance <= 0 or not np.isfinite(variance):
        return 1.0
    spectrum = np.fft.rfft(centred, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n] / (n * variance)
    pair_count = n // 2
    pairs = acf[: 2 * pair_count : 2] + acf[1 : 2 * pair_count : 2]
    negative = np.flatnonzero(pairs <= 0)
    pairs = pairs[: negative[0]] if negative.size else pairs
    pairs = np.minimum.accumulate(pairs)
    return max(1.0, -1.0 + 2.0 * float(pairs.sum()))


def effective_sample_size(traces: np.ndarray) -> float:
    """Sum over chains of draws / autocorrelation time."""
    return float(sum(row.shape[0] / autocorrelation_time(row) for row in traces))


def split_rhat(traces: np.ndarray) -> float:
    """Gelman-Rubin potential scale reduction on chains split in halves.

    Near 1 when all (half-)chains sample the same distribution; NaN with
    fewer than 4 draws.
    """
    half = traces.shape[1] // 2
    if half < 2:
        return float("nan")
    halves = np.concatenate([traces[:, :half], traces[:, -half:]], axis=0)
    within = halves.var(axis=1, ddof=1).mean()
    between = half * halves.mean(axis=1).var(ddof=1)
    if within <= 0:
        return 1.0 if between <= 0 else float("inf")
    pooled = (half - 1) / half * within + between / half
    return float(np.sqrt(pooled / within))


def geweke_z(traces: np.ndarray, first: float = 0.1, last: float = 0.5) -> float:
    """Combined Geweke z-score: early-draw mean minus late-draw mean, in SEs.

    Per chain, the mean of the first ``first`` fraction of draws is compared
    with the mean of the last ``last`` fraction, each with its
    autocorrelation-corrected variance; the chains' scores are summed and
    divided by sqrt(chains).  |z| well above 2 means the chains had not
    settled when drawing began.
    """
    n = traces.shape[1]
    n_first, n_last = max(2, int(first * n)), max(2, int(last * n))
    if n_first + n_last > n:
        return float("nan")
    scores = []
    for row in traces:
        early, late = row[:n_first], row[-n_last:]
        variance = (
            early.var(ddof=1) * autocorrelation_time(early) / n_first
            + late.var(ddof=1) * autocorrelation_time(late) / n_last
        )
        if variance <= 0:
            continue
        scores.append((early.mean() - late.mean()) / np.sqrt(variance))
    if not scores:
        return 0.0
    return float(np.sum(scores) / np.sqrt(len(scores)))


def settling_step(chain_mean: np.ndarray) -> int:
    """First step at which the chain-averaged trace reaches its late level.

    The trace is smoothed with a moving average over 5% of its length; the
    late level is the mean of its second half.  Returns the first step whose
    smoothed value is within 10% of the distance between the start and the
    late level (the trace's length if it never gets there).
    """
    n = chain_mean.shape[0]
    window = max(1, n // 20)
    smooth = np.convolve(chain_mean, np.ones(window) / window, mode="valid")
    target = chain_mean[n // 2 :].mean()
    gap = abs(smooth[0] - target)
    if gap == 0:
        return 0
    close = np.flatnonzero(np.abs(smooth - target) <= 0.1 * gap)
    return int(close[0]) + window - 1 if close.size else n


def trend_drift(traces: np.ndarray) -> tuple[float, float]:
    """Drift of the chain-averaged trace over the draws, and its standard error.

    A straight line is fitted by least squares to the mean over chains of
    ``traces`` ``[chains, draws]``; the drift is its slope times the number of
    draws (how far the level moved from the first draw to the last).  The
    error comes from the residuals about the line, corrected for their
    autocorrelation, so a slow trend that an autocorrelation estimate of the
    raw trace would absorb still shows up as significant.
    """
    mean = np.nanmean(traces, axis=0)
    n = mean.shape[0]
    if n < 4 or not np.isfinite(mean).all():
        return float("nan"), float("nan")
    steps = np.arange(n) - (n - 1) / 2
    spread = float((steps**2).sum())
    slope = float((steps * (mean - mean.mean())).sum() / spread)
    residuals = mean - mean.mean() - slope * steps
    variance = residuals.var(ddof=2) * autocorrelation_time(residuals)
    slope_se = float(np.sqrt(variance / spread))
    return slope * n, slope_se * n


def is_stationary(
    traces: np.ndarray, tolerance: float = 0.1, z_limit: float = 3.0
) -> tuple[bool, float]:
    """Whether the draws of ``traces`` stopped trending, and the relative drift.

    Stationary unless the fitted drift over the draws (:func:`trend_drift`)
    is both larger than ``tolerance`` times the traces' mean level and more
    than ``z_limit`` standard errors from zero: a trend that is small or that
    noise explains passes.  The relative drift returned is drift / |level|.
    """
    drift, drift_se = trend_drift(traces)
    level = abs(float(np.nanmean(traces)))
    if not np.isfinite(drift):
        return False, float("nan")
    relative = abs(drift) / level if level > 0 else float("inf")
    significant = abs(drift) > z_limit * drift_se
    return not (relative > tolerance and significant), relative
