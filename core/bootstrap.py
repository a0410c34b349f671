"""Confidence intervals: percentile bootstrap of a mean and paired bootstrap of a difference."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(
    x: np.ndarray, n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``x`` and its percentile bootstrap ``1 - alpha`` interval."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """The mean difference ``b - a`` of paired per-query values with its bootstrap interval and a two-sided
    p-value (the share of resampled differences on the other side of 0, doubled)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} vs {b.shape}")
    d = b - a
    if len(d) == 0:
        nan = float("nan")
        return {"base": nan, "personal": nan, "diff": nan, "ci_low": nan, "ci_high": nan, "p_value": nan}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    if np.all(d == 0):
        p = 1.0
    else:
        p = float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))
    return {
        "base": float(a.mean()),
        "personal": float(b.mean()),
        "diff": float(d.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": p,
    }
