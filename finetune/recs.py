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
top ``neighbours`` per product are kept.  A build replaces the serving one only when it saw at least half its
engagements and the same recipe, built without the last ``recs.guard_days``, beats popularity on them
(:mod:`finetune.recs_guard`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from core.config import RecsConfig
from engine.recs import Neighbours, models_dir, save

ENGAGEMENTS = {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}
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


def build_and_save(
    out: Path,
    ids: Sequence[str],
    users,
    rows,
    events,
    ts,
    s: RecsConfig | None = None,
    categories=None,
    built_at: float | None = None,
    guard: dict | None = None,
) -> dict:
    """:func:`build`, written to ``out`` through a staging folder swapped in at the end (a crash leaves the
    previous models in place).  ``built_at`` (default now): when its events were read — a user forgotten
    later pauses the build (:mod:`engine.forgotten`)."""
    import os
    import shutil

    built_at = time.time() if built_at is None else float(built_at)
    out = Path(out)
    stage = out.with_name(out.name + ".staging")
    shutil.rmtree(stage, ignore_errors=True)
    similar, together, items, card = build(users, rows, events, ts, len(ids), s, categories=categories)
    card["built_at"] = built_at
    if guard is not None:
        card["guard"] = guard
    save(stage, similar, together, items, card, ids)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)
    return card


def events_of_log(path: Path, row_of: dict) -> tuple:
    """(users, rows, events, times) of a click log's events on products the index has."""
    from core.formats.clicklog import read_clicklog

    ev = [e for e in read_clicklog(path) if e.product_id in row_of]
    return (
        [e.user_id for e in ev],
        [row_of[e.product_id] for e in ev],
        [e.event for e in ev],
        [e.timestamp for e in ev],
    )


def events_of_store(user_events, until: float) -> tuple:
    """(hashed users, rows, events, times) of the event store's credited events before ``until``, in pages."""
    from core.formats.clicklog import EVENTS

    row_of = user_events.row_map()
    users, rows, events, ts = [], [], [], []
    for page in user_events.event_pages(until):
        for u, p, c, t in page:
            r = row_of.get(p)
            if r is not None and c > 0:
                users.append(u), rows.append(r), events.append(EVENTS[c]), ts.append(t)
    return users, rows, events, ts


def without_forgotten(src: tuple, forgotten: dict[str, float], key) -> tuple[tuple, int]:
    """The events of ``src`` (users, rows, events, times) less those of forgotten users (``forgotten``: hashed
    keys, :func:`engine.forgotten.read`; ``key``: a user id -> its hashed key, None where the ids are already
    keys), and how many were left out."""
    if not forgotten:
        return src, 0
    users = src[0]
    hashed: dict[str, str] = {}
    drop = np.zeros(len(users), dtype=bool)
    for i, u in enumerate(users):
        h = hashed.get(u)
        if h is None:
            h = hashed[u] = u if key is None else key(u)
        drop[i] = h in forgotten
    if not drop.any():
        return src, 0
    keep = np.flatnonzero(~drop)
    return tuple([part[i] for i in keep] for part in src), int(drop.sum())


def shrunk(out: Path, engagements: int, keep: float = 0.5) -> str | None:
    """Why a build from ``engagements`` events should not replace the serving one at ``out`` (None: it may):
    it saw less than ``keep`` of the serving build's engagements — a purged or wrong store, a truncated log."""
    import json

    card = Path(out) / "model_card.json"
    if not card.is_file():
        return None
    before = int(json.loads(card.read_text(encoding="utf-8")).get("engagements", 0))
    if engagements < keep * before:
        return f"{engagements} engagements against the serving build's {before}"
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m finetune.recs --config C [--from-store]`: build the recommendation models (module doc)."""
    import json

    from core.cli import command, load, run

    ap = command("finetune.recs", __doc__, overrides=True)
    ap.add_argument(
        "--from-store",
        action="store_true",
        help="read the event store (what `make retrain` does) instead of the config's click log",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="swap the build in even when it saw far fewer engagements than the serving one",
    )
    args = ap.parse_args(argv)

    def body():
        from engine import forgotten
        from engine.search import SearchEngine
        from finetune import recs_guard

        cfg = load(args)
        engine = SearchEngine.from_config(cfg, load_models=False)
        products = engine.products
        built_at = time.time()
        gone = forgotten.read(cfg)
        if args.from_store:
            src = events_of_store(engine.user_events(), built_at)
            where = "the event store"
        else:
            train = cfg.finetune.train
            if train is None or not Path(train).is_file():
                print(f"error: {cfg.source}: finetune.train ({train}) is not a file; use --from-store", file=sys.stderr)
                return 2
            src = events_of_log(Path(train), products.row_map())
            where = str(train)
            if gone:  # the log keeps users the store forgot: leave them out (their ids hashed as the store does)
                ue = engine.user_events()
                src, left_out = without_forgotten(src, gone, lambda u: ue.user_key(u, for_write=True))
                where += f" without {left_out} events of forgotten users"
        out = models_dir(cfg)
        problem = shrunk(out, len(src[0]))
        categories = (products.category_codes, products.categories)
        verdict = recs_guard.check(engine, src, cfg.recs, categories, build) if not problem else None
        if verdict is not None and not verdict["passed"]:
            problem = verdict["reason"]
        if problem and not args.force:
            print(f"error: {problem}; the serving models stay (--force to replace them)", file=sys.stderr)
            return 2
        card = build_and_save(
            out,
            products.ids.tolist(),
            *src,
            cfg.recs,
            categories=categories,
            built_at=built_at,
            guard=verdict,
        )
        card.pop("settings", None)
        print(f"recommendation models from {where} -> {out}")
        print(json.dumps(card, ensure_ascii=False))
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
