"""Merging the candidate lists of several stages into one ranking.

Two methods (``search.fusion``):

- ``rrf``: reciprocal rank fusion (Cormack et al. 2009), ``Σ_s w_s / (c + rank_s)``: needs no calibration between
  stages, and is what the reranked candidates are always merged by;
- ``scores``: a convex combination of each stage's scores min-max scaled over its own top ``span`` products
  (``Σ_s w_s · max(0, (x_s − lo_s) / (hi_s − lo_s))``, hi its best score and lo its ``span``-th; a product a
  stage did not return, or ranked below its ``span``-th, scores 0 there), the "CombSUM" of Fox and Shaw (1994)
  with the normalization Lee (1997) found best: it keeps how far apart a stage puts its candidates, which ranks
  throw away. The scale is taken over a fixed ``span`` (``search.candidates``) so that a deeper list (an
  evaluation's 1,000) orders its top the same as a page of 10.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from core.types import SearchResult

FUSION_METHODS = ("rrf", "scores")


def _merge(
    results: Sequence[SearchResult],
    weights: Sequence[float] | None,
    k: int,
    contrib: Callable[[SearchResult], np.ndarray],
) -> SearchResult:
    """Sum ``weight × contrib(list)`` per product over the non-empty lists; the top ``k`` (ties by row)."""
    w = [1.0] * len(results) if weights is None else list(weights)
    kept = [(r, x) for r, x in zip(results, w) if len(r.rows)]
    if not kept:
        return SearchResult(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    uniq, inv = np.unique(np.concatenate([r.rows for r, _ in kept]), return_inverse=True)
    fused = np.bincount(inv, weights=np.concatenate([x * contrib(r) for r, x in kept]))
    order = np.lexsort((uniq, -fused))[:k]
    return SearchResult(uniq[order], fused[order].astype(np.float32))


def reciprocal_rank_fusion(
    results: Sequence[SearchResult], k: int, c: float = 60.0, weights: Sequence[float] | None = None
) -> SearchResult:
    """Reciprocal rank fusion: score = sum over stages of ``weight / (c + rank)``.

    Needs no score calibration between stages (BM25 scores and cosines live on
    different scales).  Vectorized over the concatenated candidate lists.
    """
    return _merge(results, weights, k, lambda r: 1.0 / (c + np.arange(1, len(r.rows) + 1)))


def _min_max(r: SearchResult, span: int) -> np.ndarray:
    s = np.asarray(r.scores, dtype=np.float64)
    hi, lo = s[0], s[min(len(s), span) - 1]
    return np.clip((s - lo) / (hi - lo), 0.0, None) if hi > lo else np.ones(len(s))


def score_fusion(
    results: Sequence[SearchResult], k: int, weights: Sequence[float] | None = None, span: int = 100
) -> SearchResult:
    """Weighted sum of the stages' scores min-max scaled over their top ``span`` (lists are best first)."""
    return _merge(results, weights, k, lambda r: _min_max(r, span))


def fuse(
    results: Sequence[SearchResult],
    k: int,
    method: str = "rrf",
    weights: Sequence[float] | None = None,
    c: float = 60.0,
    span: int = 100,
) -> SearchResult:
    """The stages' lists merged by ``method`` (:data:`FUSION_METHODS`), weighted per stage."""
    if method == "rrf":
        return reciprocal_rank_fusion(results, k, c, weights)
    if method == "scores":
        return score_fusion(results, k, weights, span)
    raise ValueError(f"search.fusion: unknown method {method!r}; one of {list(FUSION_METHODS)}")
