"""Build the recommendation models (:mod:`engine.recs`) from events: item neighbours and ALS item factors.

Input: events as parallel arrays in time order (user keys, product rows, event names or codes, times) —
from the event store (``make retrain``) or a click log (``make finetune``).  Impressions are ignored here:
only what shoppers did (clicks, carts, purchases) says which products go together.

- **similar** (co-engagement): a *visit* is one user's engagements with gaps under ``visit_minutes``; two
  products engaged in the same visit co-occur once.  Score = co-visits / (sqrt(visits_i · visits_j) +
  ``shrink``) (cosine, shrunk so that a pair seen once between two rare products does not outrank a pair
  seen fifty times).
- **bought together** (co-conversion): a *basket* is one user's carts and purchases with gaps under
  ``basket_days``; pairs in at least ``min_support`` baskets count.  Score = lift (co-baskets · N /
  (baskets_i · baskets_j)) damped by the pair's evidence (co / (co + ``shrink``)), so that complements
  bought together far more often than chance lead.
- **ALS** (``implicit``): users × products with confidence = decayed gains (click 1, cart 2, purchase 3),
  ``factors`` dimensions; the engine solves a user's vector from their current history at request time.

Everything is vectorized with ``scipy.sparse`` (a visit × product incidence matrix, its Gram matrix); the
top ``neighbours`` per product are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.recs import Neighbours, save

ENGAGEMENTS = {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}
CONVERSIONS = ("add_to_cart", "purchase")


@dataclass
class RecsSettings:
    visit_minutes: float = 30.0
    basket_days: float = 7.0
    min_support: int = 2
    shrink: float = 5.0
    neighbours: int = 50
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    half_life_days: float = 90.0
    seed: int = 0


def _episodes(users: np.ndarray, ts: np.ndarray, gap: float) -> np.ndarray:
    """An episode id per event (events sorted by user, then time): a new one at each user change or gap."""
    new = np.ones(len(ts), dtype=bool)
    if len(ts) > 1:
        new[1:] = (users[1:] != users[:-1]) | (np.diff(ts) > gap)
    return np.cumsum(new) - 1


def _by_user_time(users: np.ndarray, ts: np.ndarray) -> np.ndarray:
    _, inv = np.unique(users.astype(str), return_inverse=True)
    return np.lexsort((ts, inv))


def co_occurrence(episode: np.ndarray, rows: np.ndarray, n: int):
    """(C, counts): C[i, j] = episodes holding both i and j (i ≠ j, sparse CSR), counts[i] = episodes
    holding i."""
    import scipy.sparse as sp

    if not len(rows):
        return sp.csr_matrix((n, n)), np.zeros(n)
    m = int(episode.max()) + 1
    inc = sp.csr_matrix((np.ones(len(rows)), (episode, rows)), shape=(m, n))
    inc.data[:] = 1.0  # duplicates within an episode count once
    C = (inc.T @ inc).tocsr()
    counts = C.diagonal().copy()
    C.setdiag(0)
    C.eliminate_zeros()
    return C, counts


def top_neighbours(S, k: int) -> Neighbours:
    """The ``k`` best-scored columns of each row of a sparse score matrix (−1 padded)."""
    n = S.shape[0]
    rows = np.full((n, k), -1, dtype=np.int32)
    scores = np.zeros((n, k), dtype=np.float32)
    S = S.tocsr()
    indptr, indices, data = S.indptr, S.indices, S.data
    lengths = np.diff(indptr)
    for i in np.flatnonzero(lengths):  # one argpartition per product with neighbours (offline)
        a, b = indptr[i], indptr[i + 1]
        d = data[a:b]
        top = np.argsort(-d, kind="stable")[:k]
        rows[i, : len(top)] = indices[a:b][top]
        scores[i, : len(top)] = d[top]
    return Neighbours(rows, scores)


def similar_scores(C, counts: np.ndarray, shrink: float):
    """Cosine of co-visit counts, shrunk: C_ij / (sqrt(n_i n_j) + shrink)."""
    C = C.tocoo()
    denom = np.sqrt(counts[C.row] * counts[C.col]) + shrink
    import scipy.sparse as sp

    return sp.csr_matrix((C.data / denom, (C.row, C.col)), shape=C.shape)


def together_scores(C, counts: np.ndarray, n_baskets: int, min_support: int, shrink: float):
    """Lift of co-basket counts with at least ``min_support``, damped by evidence: lift · co / (co + shrink)."""
    import scipy.sparse as sp

    C = C.tocoo()
    keep = C.data >= min_support
    r, c, co = C.row[keep], C.col[keep], C.data[keep]
    lift = co * max(n_baskets, 1) / np.maximum(counts[r] * counts[c], 1.0)
    return sp.csr_matrix((lift * co / (co + shrink), (r, c)), shape=C.shape)


def als_items(users: np.ndarray, rows: np.ndarray, weights: np.ndarray, n: int, s: RecsSettings) -> np.ndarray | None:
    """ALS item factors from users × products confidences (``implicit``, CPU); None with too little data."""
    import scipy.sparse as sp

    _, uidx = np.unique(users.astype(str), return_inverse=True)
    if uidx.max(initial=-1) < 1 or len(np.unique(rows)) < 2:
        return None
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    M = sp.csr_matrix((weights, (uidx, rows)), shape=(int(uidx.max()) + 1, n))
    with threadpool_limits(1, "blas"):  # implicit parallelizes itself; a BLAS pool under it only contends
        model = AlternatingLeastSquares(
            factors=s.factors,
            iterations=s.iterations,
            regularization=s.regularization,
            random_state=s.seed,
            use_gpu=False,
            calculate_training_loss=False,
        )
        model.fit(M.astype(np.float32), show_progress=False)
    items = model.item_factors
    return np.asarray(items.to_numpy() if hasattr(items, "to_numpy") else items, dtype=np.float32)


def build(
    users: Sequence,
    rows: Sequence[int],
    events: Sequence[str],
    ts: Sequence[float],
    n_products: int,
    s: RecsSettings | None = None,
    now: float | None = None,
) -> tuple[Neighbours, Neighbours, np.ndarray | None, dict]:
    """The three models and a card (counts, settings, seconds) from events (see the module docstring)."""
    s = s or RecsSettings()
    t0 = time.perf_counter()
    users, rows = np.asarray(users, dtype=object), np.asarray(rows, dtype=np.int64)
    events, ts = np.asarray(events, dtype=object), np.asarray(ts, dtype=np.float64)
    gain = np.array([ENGAGEMENTS.get(e, 0.0) for e in events])
    eng = gain > 0
    users, rows, events, ts, gain = users[eng], rows[eng], events[eng], ts[eng], gain[eng]
    order = _by_user_time(users, ts) if len(ts) else np.zeros(0, dtype=np.int64)
    users, rows, events, ts, gain = users[order], rows[order], events[order], ts[order], gain[order]

    visit = _episodes(users, ts, s.visit_minutes * 60.0)
    C, counts = co_occurrence(visit, rows, n_products)
    similar = top_neighbours(similar_scores(C, counts, s.shrink), s.neighbours)

    conv = np.isin(events, CONVERSIONS)
    basket = _episodes(users[conv], ts[conv], s.basket_days * 86400.0)
    Cb, counts_b = co_occurrence(basket, rows[conv], n_products)
    n_baskets = int(basket.max()) + 1 if len(basket) else 0
    distinct = np.unique(np.column_stack([basket, rows[conv]]), axis=0)[:, 0] if len(basket) else basket
    multi = int((np.bincount(distinct, minlength=n_baskets) > 1).sum())
    together = top_neighbours(together_scores(Cb, counts_b, n_baskets, s.min_support, s.shrink), s.neighbours)

    now = float(ts.max()) if now is None and len(ts) else (now or 0.0)
    decay = 2.0 ** (-(now - ts) / (s.half_life_days * 86400.0)) if len(ts) else ts
    items = als_items(users, rows, gain * decay, n_products, s) if len(ts) else None
    card = {
        "engagements": int(len(ts)),
        "users": int(len(np.unique(users.astype(str)))) if len(users) else 0,
        "visits": int(visit.max()) + 1 if len(visit) else 0,
        "baskets": multi,
        "conversions": int(conv.sum()),
        "products_with_similar": int((similar.rows[:, 0] >= 0).sum()),
        "products_with_together": int((together.rows[:, 0] >= 0).sum()),
        "als_factors": int(items.shape[1]) if items is not None else 0,
        "regularization": s.regularization,
        "settings": {k: getattr(s, k) for k in s.__dataclass_fields__},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return similar, together, items, card


def build_and_save(out: Path, ids: Sequence[str], users, rows, events, ts, s: RecsSettings | None = None) -> dict:
    """:func:`build`, written to ``out`` through a staging folder swapped in at the end (a crash leaves the
    previous models in place)."""
    import os
    import shutil

    out = Path(out)
    stage = out.with_name(out.name + ".staging")
    shutil.rmtree(stage, ignore_errors=True)
    similar, together, items, card = build(users, rows, events, ts, len(ids), s)
    save(stage, similar, together, items, card, ids)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)
    return card
