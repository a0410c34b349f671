"""Simulated shoppers on a served engine: searches logged as impressions, and position-biased clicks on them.

Each shopper searches one query, is shown the engine's top ``k`` and examines rank ``r`` with probability
``θ_r = r^−η`` (the position-based click model); an examined product is clicked with ``p_relevant · a`` when it
is one the query wants, ``a`` its attractiveness (:func:`attractiveness`: 1 for the best judged grade, less for
lower ones), and ``p_noise`` otherwise; a clicked wanted product is put in the cart
with ``p_cart`` and bought with ``p_purchase``.  The searches and events go into the engine's event store exactly
as the service writes them (impressions; events carrying the search id, its rank), so `make retrain` reads them
as it reads real traffic.  ``explore``: the share of searches whose shown list is shuffled (the exploration a
shop may run so that every product is seen at several ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from engine.events.impressions import Impression, new_search_id


@dataclass
class ClickModel:
    eta: float = 1.0  # position bias: θ_r = r^−η
    p_relevant: float = 0.9
    p_noise: float = 0.03
    p_cart: float = 0.3
    p_purchase: float = 0.3

    def examination(self, k: int) -> np.ndarray:
        return np.arange(1, k + 1, dtype=np.float64) ** -self.eta


def attractiveness(relevance: Mapping[str, float]) -> dict[str, float]:
    """``(2^g − 1) / (2^g_max − 1)`` per judged product of one query (the gain NDCG gives a grade, scaled)."""
    if not relevance:
        return {}
    top = 2.0 ** max(relevance.values()) - 1.0
    return {p: (2.0**g - 1.0) / top for p, g in relevance.items() if g > 0} if top > 0 else {}


def served_lists(engine, texts: Sequence[str], k: int = 10, batch: int = 32) -> dict[str, list[str]]:
    """The engine's top ``k`` product ids of each query, no user (what an anonymous shopper is shown)."""
    out: dict[str, list[str]] = {}
    uniq = list(dict.fromkeys(texts))
    for i in range(0, len(uniq), batch):
        chunk = uniq[i : i + batch]
        for q, res in zip(chunk, engine.query_batch(chunk, k=k)):
            out[q] = [h.product_id for h in res.hits]
    return out


def simulate(
    events,
    lists: Mapping[str, list[str]],
    wanted: Mapping[str, Mapping[str, float]],
    sessions: Sequence[tuple[str | None, str, float]],
    model: ClickModel,
    rng: np.random.Generator,
    explore: float = 0.0,
) -> dict:
    """Log ``sessions`` ((user id or None, query, time) each, shown ``lists[query]``) and the clicks they draw
    (``wanted``: per query, the attractiveness of the products it wants) into ``events``
    (:class:`engine.events.UserEvents`).  Returns counts (searches, clicks, carts, purchases)."""
    imps, users, pids, rows, kinds, ts, queries, links = [], [], [], [], [], [], [], []
    for user_id, q, t in sessions:
        shown = list(lists.get(q, []))
        if not shown:
            continue
        if explore > 0 and rng.random() < explore:
            shown = [shown[i] for i in rng.permutation(len(shown))]
        sid = new_search_id()
        key = events.user_key(user_id, for_write=True) if user_id is not None else None
        imps.append(Impression(sid, t, key, q, q, {}, len(shown), 0, shown, {}, None))
        theta = model.examination(len(shown))
        seen = rng.random(len(shown)) < theta
        want = wanted.get(q, {})
        a = np.array([float(want.get(p, 0.0)) for p in shown])
        good = a > 0
        click = seen & (rng.random(len(shown)) < np.where(good, model.p_relevant * a, model.p_noise))
        for r in np.flatnonzero(click):
            pid = shown[r]
            steps = ["click"]
            if good[r] and rng.random() < model.p_cart:
                steps.append("add_to_cart")
                if rng.random() < model.p_purchase:
                    steps.append("purchase")
            for j, kind in enumerate(steps):
                users.append(key if key is not None else "anon:" + sid)
                pids.append(pid)
                rows.append(events.row_of(pid))
                kinds.append(kind)
                ts.append(t + 5.0 + 10.0 * (r + j))
                queries.append(q)
                links.append((sid, int(r) + 1, None))
    events.log_impressions(imps)
    if users:
        events.append_bulk(
            users, pids, np.asarray(rows, dtype=np.int64), kinds, np.asarray(ts, dtype=np.float64), queries, links
        )
    return {
        "searches": len(imps),
        "clicks": kinds.count("click"),
        "carts": kinds.count("add_to_cart"),
        "purchases": kinds.count("purchase"),
    }
