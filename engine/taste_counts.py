"""The layout of a shopper's taste evidence per facet value (:attr:`engine.profiles.Profile.taste`, read by
:mod:`engine.taste`): decayed sums per rank bucket — what was shown, what was clicked, and, where the search that
showed a product logged how relevant it found it (a click log-odds ``x``), the same counted again with their
summed ``x``."""

from __future__ import annotations

import numpy as np

TASTE_BUCKETS = 6  # engine.taste.N_BUCKETS (ranks 1, 2, 3, 4-5, 6-10, 11+)
TASTE_EDGES = (2, 3, 4, 6, 11)
# a value's taste evidence: per rank bucket, the decayed impressions, clicks, impressions with a logged relevance x,
# their summed x, clicks with an x, their summed x (one block of TASTE_BUCKETS each, in this order)
TASTE_PARTS = ("shown", "clicked", "shown_x", "sum_x", "clicked_x", "sum_clicked_x")
TASTE_WIDTH = len(TASTE_PARTS) * TASTE_BUCKETS
COUNTS_WIDTH = 2 * TASTE_BUCKETS  # shown and clicked: all a value's evidence holds where no relevance was logged


def taste_row(v: list[float]) -> list[float]:
    """A value's evidence at :data:`TASTE_WIDTH` (profiles stored before relevance was logged hold the counts
    only: no x)."""
    return v if len(v) >= TASTE_WIDTH else list(v) + [0.0] * (TASTE_WIDTH - len(v))


def taste_cols(rank, clicked):
    """(count column, count-with-x column, x-sum column) of impressions (``clicked`` false) or clicks at 1-based
    ``rank`` — ints or arrays alike (the one place the layout of :data:`TASTE_PARTS` is spelled)."""
    b = taste_bucket(rank)
    k = np.asarray(clicked, dtype=np.int64)
    return b + TASTE_BUCKETS * k, b + TASTE_BUCKETS * (2 + 2 * k), b + TASTE_BUCKETS * (3 + 2 * k)


def taste_columns(rank, clicked, x=None):
    """The evidence columns an impression (or a click) at 1-based ``rank`` adds to, with its weight's factor:
    ``[(column, factor)]`` — its count, and with a finite relevance ``x`` its count with x and its x."""
    n, nx, sx = (int(c) for c in taste_cols(rank, bool(clicked)))
    if x is None or not np.isfinite(x):
        return [(n, 1.0)]
    return [(n, 1.0), (nx, 1.0), (sx, float(x))]


def taste_parts(a: np.ndarray) -> tuple:
    """The :data:`TASTE_PARTS` blocks (``[..., TASTE_BUCKETS]`` each) of evidence ``a`` ``[..., TASTE_WIDTH]``."""
    return tuple(a[..., j * TASTE_BUCKETS : (j + 1) * TASTE_BUCKETS] for j in range(len(TASTE_PARTS)))


def taste_bucket(rank):
    """The rank bucket of 1-based ``rank`` (an int or an array of them): 0 for rank 1 … 5 for 11 and deeper."""
    return np.searchsorted(TASTE_EDGES, rank, side="right")


def cap_taste(values: dict[str, list[float]], cap: int) -> dict[str, list[float]]:
    """The ``cap`` values with the most impressions and clicks in all (ties by key)."""
    if len(values) <= cap:
        return values
    keep = sorted(values.items(), key=lambda kv: (-sum(kv[1][:COUNTS_WIDTH]), kv[0]))[:cap]
    return dict(keep)
