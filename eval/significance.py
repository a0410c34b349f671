"""Per-query metrics → confidence: a bootstrap interval per stage, paired intervals and p-values for each
stage's gain over the one before it (or for one configuration against another), and the queries a change
hurt most.  Plain functions over the per-query arrays of :class:`eval.evaluate.StageResult`."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from core.bootstrap import bootstrap_ci, paired_bootstrap


def intervals(per_query: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, dict[str, float]]:
    """``{metric: {mean, ci_low, ci_high}}``: the mean over queries and its 95% percentile bootstrap interval."""
    out = {}
    for m, values in per_query.items():
        values = np.asarray(values, dtype=np.float64)
        mean, lo, hi = bootstrap_ci(values[~np.isnan(values)], seed=seed)  # undefined (NaN) queries left out
        out[m] = {"mean": mean, "ci_low": lo, "ci_high": hi}
    return out


def paired(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, dict[str, float]]:
    """``{metric: {a, b, diff, ci_low, ci_high, p_value}}`` of ``b − a`` over the same queries (paired
    bootstrap: queries resampled together, so what both find hard cancels out)."""
    out = {}
    for m in a:
        if m not in b:
            continue
        x, y = np.asarray(a[m], dtype=np.float64), np.asarray(b[m], dtype=np.float64)
        ok = ~(np.isnan(x) | np.isnan(y))  # a query undefined on either side (recall with nothing to find)
        r = paired_bootstrap(x[ok], y[ok], seed=seed)
        out[m] = {
            "a": r["base"],
            "b": r["personal"],
            "diff": r["diff"],
            "ci_low": r["ci_low"],
            "ci_high": r["ci_high"],
            "p_value": r["p_value"],
        }
    return out


def most_hurt(a: np.ndarray, b: np.ndarray, qids: Sequence[str], n: int = 5) -> list[tuple[str, float, float]]:
    """The ``n`` queries whose value fell most from ``a`` to ``b`` (only those that fell): (qid, a, b)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    order = np.argsort(d, kind="stable")
    return [(qids[i], float(a[i]), float(b[i])) for i in order[:n] if d[i] < 0]


def fmt_interval(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(mean)} [{f.format(lo)}, {f.format(hi)}]"
