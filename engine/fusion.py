"""Merging the candidate lists of several stages into one ranking."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from core.types import SearchResult


def reciprocal_rank_fusion(results: Sequence[SearchResult], k: int, c: float = 60.0) -> SearchResult:
    """Reciprocal rank fusion (Cormack et al. 2009): score = sum over stages of 1 / (c + rank).

    Needs no score calibration between stages (BM25 scores and cosines live on
    different scales).  Vectorized over the concatenated candidate lists.
    """
    results = [r for r in results if len(r.rows)]
    if not results:
        return SearchResult(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    rows = np.concatenate([r.rows for r in results])
    contrib = np.concatenate([1.0 / (c + np.arange(1, len(r.rows) + 1)) for r in results])
    uniq, inv = np.unique(rows, return_inverse=True)
    fused = np.bincount(inv, weights=contrib)
    order = np.lexsort((uniq, -fused))[:k]
    return SearchResult(uniq[order], fused[order].astype(np.float32))
