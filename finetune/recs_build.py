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
top ``neighbours`` per product are kept.  :func:`built_recommender` serves a build made here at once (a time
split's replay: `make eval-recs`, the quality guard); :mod:`finetune.recs` writes builds and runs the command.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from core.config import RecsConfig
from engine.recs import GAINS, Neighbours

CONVERSIONS = ("add_to_cart", "purchase")
BUILD_SETTINGS = (
    "visit_minutes",
    "basket_days",
    "min_support",
    "shrink",
    "neighbours",
    "factors",
    "iterations",
    "regularization",
    "build_half_life_days",
)


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


def als_items(users: np.ndarray, rows: np.ndarray, weights: np.ndarray, n: int, s: RecsConfig) -> np.ndarray | None:
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
            random_state=0,
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
    s: RecsConfig | None = None,
    now: float | None = None,
    categories: tuple[np.ndarray, Sequence[str]] | None = None,
) -> tuple[Neighbours, Neighbours, np.ndarray | None, dict]:
    """The three models and a card (counts, settings, seconds) from events (see the module docstring).
    ``categories``: (category code per product row, category names): the card then lists the categories
    shoppers buy again (:func:`repeat_categories`)."""
    s = s or RecsConfig()
    t0 = time.perf_counter()
    users, rows = np.asarray(users, dtype=object), np.asarray(rows, dtype=np.int64)
    events, ts = np.asarray(events, dtype=object), np.asarray(ts, dtype=np.float64)
    gain = np.array([GAINS.get(e, 0.0) for e in events])
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
    decay = 2.0 ** (-(now - ts) / (s.build_half_life_days * 86400.0)) if len(ts) else ts
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
        "repeat_categories": repeat_categories(users, rows, events, *categories) if categories else [],
        "category_lift": category_lift(basket, rows[conv], *categories, s.min_support) if categories else {},
        "regularization": s.regularization,
        "settings": {k: getattr(s, k) for k in BUILD_SETTINGS},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return similar, together, items, card


def repeat_categories(
    users: np.ndarray, rows: np.ndarray, events: np.ndarray, codes: np.ndarray, names: Sequence[str]
) -> list[str]:
    """Categories shoppers buy again: at least 10% of their purchases (and 5 in all) are of a product the same
    user bought before (events sorted by user and time).  For you leaves bought products of other categories
    out."""
    buy = events == "purchase"
    if not buy.any():
        return []
    u, r = users[buy].astype(str), rows[buy]
    pair = np.char.add(np.char.add(u, "|"), r.astype(str))
    _, first = np.unique(pair, return_index=True)
    again = np.ones(len(pair), dtype=bool)
    again[first] = False
    cat = np.asarray(codes)[r]
    ok = cat >= 0
    n = np.bincount(cat[ok], minlength=len(names))
    rep = np.bincount(cat[ok], weights=again[ok].astype(float), minlength=len(names))
    return [names[c] for c in np.flatnonzero((rep >= 5) & (rep >= 0.1 * np.maximum(n, 1)))]


def category_lift(basket: np.ndarray, rows: np.ndarray, codes: np.ndarray, names, min_support: int) -> dict:
    """Which categories go into one basket together, more than chance: ``{category: {other: lift}}`` over the
    pairs of different categories seen in at least ``min_support`` baskets (what bought-together falls back on
    for a product without pairs of its own)."""
    cats = np.asarray(codes)[rows]
    ok = cats >= 0
    if not ok.any():
        return {}
    C, counts = co_occurrence(basket[ok], cats[ok], len(names))
    C = C.tocoo()
    n = int(basket.max()) + 1 if len(basket) else 0
    out: dict = {}
    for a, b, co in zip(C.row.tolist(), C.col.tolist(), C.data.tolist()):
        if co >= min_support:
            out.setdefault(names[a], {})[names[b]] = round(co * n / max(counts[a] * counts[b], 1.0), 3)
    return out


def built_recommender(engine, src: tuple, s: RecsConfig, now: float):
    """(a :class:`engine.recommend.Recommender` over models built from ``src`` — users, rows, events, times —
    with ``s``, its trending as of ``now``; the build's card; the seconds it took): what a build would serve,
    without writing it."""
    from engine.recommend import Recommender
    from engine.recs import RecModels

    products = engine.products
    t0 = time.perf_counter()
    similar, together, items, card = build(
        *src, len(products), s, categories=(products.category_codes, products.categories)
    )
    seconds = time.perf_counter() - t0
    rec = Recommender(engine.version, RecModels(similar, together, items, s.regularization, card), s)
    rows, ts = np.asarray(src[1], dtype=np.int64), np.asarray(src[3], dtype=np.float64)
    gain = np.array([GAINS.get(e, 0.0) for e in src[2]]) * 2.0 ** (-(now - ts) / (s.trending_half_life_hours * 3600.0))
    rec.set_trending(np.bincount(rows, weights=gain, minlength=len(products)), now)
    return rec, card, seconds
