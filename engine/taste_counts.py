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


def taste_row(v: list[float]) -> list[float]:
    """A value's evidence at :data:`TASTE_WIDTH` (profiles stored before relevance was logged hold the counts
    only: no x)."""
    return v if len(v) >= TASTE_WIDTH else list(v) + [0.0] * (TASTE_WIDTH - len(v))


def taste_columns(rank, clicked, x=None):
    """The evidence columns an impression (or a click) at 1-based ``rank`` adds to, with its weight's factor:
    ``[(column, factor)]`` — its count, and with a finite relevance ``x`` its count with x and its x."""
    b = int(taste_bucket(rank))
    k = 1 if clicked else 0
    out = [(b + k * TASTE_BUCKETS, 1.0)]
    if x is not None and np.isfinite(x):
        out += [(b + (2 + 2 * k) * TASTE_BUCKETS, 1.0), (b + (3 + 2 * k) * TASTE_BUCKETS, float(x))]
    return out


def taste_bucket(rank):
    """The rank bucket of 1-based ``rank`` (an int or an array of them): 0 for rank 1 … 5 for 11 and deeper."""
    return np.searchsorted(TASTE_EDGES, rank, side="right")


def cap_taste(values: dict[str, list[float]], cap: int) -> dict[str, list[float]]:
    """The ``cap`` values with the most impressions and clicks in all (ties by key)."""
    if len(values) <= cap:
        return values
    keep = sorted(values.items(), key=lambda kv: (-sum(kv[1][: 2 * TASTE_BUCKETS]), kv[0]))[:cap]
    return dict(keep)
