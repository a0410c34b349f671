"""``for_you`` scores: a shopper's recent engagements and searches turned into a score per product.

Parts, each normalized to a maximum of 1 and mixed by ``recs.for_you_weights``
(docs/recommendations.md):

- ``neighbours``: the co-visit and co-basket neighbours of what they engaged with;
- ``als``: an ALS user vector solved now from those engagements, against the built item factors;
- ``taste``: each product's (category, brand) share of the history (plus ``recs.taste_category`` of its
  category's share): the brand a shopper keeps choosing within a category, a taste that co-occurrence
  models see only through other shoppers who happen to share it;
- ``again``: what they bought in categories shoppers buy again;
- ``searches``: each recent search's BM25 results and those results' complements (the query being typed
  first);
- ``profile``: the profile's category shares.

Every engagement counts by its gain (click 1, cart 2, purchase 3) decayed with
``recs.history_half_life_hours``; products bought in categories shoppers buy once are left out.
"""

from __future__ import annotations

import numpy as np

from core.config.recs import FOR_YOU_WEIGHTS
from engine.recs import GAINS


def norm_max(x: np.ndarray) -> np.ndarray:
    """``x`` over its maximum (zeros where nothing is positive)."""
    top = float(np.max(x)) if len(x) else 0.0
    return x / top if top > 0 else np.zeros_like(x)


def taste(products, rows: np.ndarray, w: np.ndarray, category_weight: float) -> np.ndarray:
    """Per product: the share of the weights ``w`` of the history ``rows`` on its (category, brand), plus
    ``category_weight`` × its category's share, normalized to max 1.  A product without a category counts by its
    brand among the uncategorized; one with neither gets 0."""
    cat, br = products.category_codes, products.brand_codes  # -1 (none) indexes the extra last slot
    m = np.zeros((len(products.categories) + 1, len(products.brands) + 1))
    np.add.at(m, (cat[rows], br[rows]), w)
    m[-1, -1] = 0.0  # neither category nor brand: says nothing
    share = m / max(float(m.sum()), 1e-12)
    by_category = share.sum(axis=1)
    by_category[-1] = 0.0  # "no category" is not a category
    return norm_max(share[cat, br] + category_weight * by_category[cat])


def _bought(rec, hist) -> tuple[np.ndarray, np.ndarray]:
    """(bought again, bought once): the history's purchases in categories shoppers buy again, and the others."""
    bought = hist.rows[np.array([e == "purchase" for e in hist.events], dtype=bool)]
    again = rec.repeat_categories[rec.products.category_codes[bought]]
    return bought[again], bought[~again]


def _engagement_parts(rec, hist, now: float, again: np.ndarray) -> dict[str, np.ndarray]:
    """The parts read from the history's engagements (neighbours, als, taste, and ``again``: its purchases in
    categories shoppers buy again)."""
    cfg, n = rec.cfg, rec.n
    hl = cfg.history_half_life_hours * 3600.0
    w = np.array([GAINS.get(e, 0.0) for e in hist.events]) * 2.0 ** (-np.maximum(now - hist.ts, 0) / hl)
    rows = hist.rows
    parts = {}
    if rec.models is not None:
        m = rec.models
        parts["neighbours"] = norm_max(m.similar.spread(rows, w, n) + m.together.spread(rows, w, n))
        u = m.user_vector(rows, 10.0 * w)
        if u is not None:
            parts["als"] = norm_max(np.clip(m.items @ u, 0, None))
    parts["taste"] = taste(rec.products, rows, w, cfg.taste_category)
    if len(again):  # buy again: what they bought in categories shoppers buy again
        parts["again"] = np.zeros(n)
        parts["again"][again] = 1.0
    return parts


def _search_part(rec, searches: list, mask, now: float) -> np.ndarray:
    """Each search's BM25 results (decayed by the search's age) and what goes with its top five."""
    hl = rec.cfg.history_half_life_hours * 3600.0
    s = np.zeros(rec.n)
    for q, t in searches[: rec.cfg.history_searches + 1]:
        res = rec.v.first_stages.bm25(rec.v.understand(q).text, 50, mask)
        wq = 2.0 ** (-max(now - t, 0.0) / hl)
        rows = np.asarray(res.rows)
        s[rows] += wq * norm_max(np.asarray(res.scores, dtype=np.float64))
        if rec.models is not None and len(rows):  # what goes with what they searched for
            s += 0.5 * wq * norm_max(rec.models.together.spread(rows[:5], np.ones(min(5, len(rows))), rec.n))
    return norm_max(s)


def for_history(rec, hist, query, mask, profile, now: float):
    """(scores, parts, source) for ``rec`` (:class:`engine.recommend.Recommender`): a history
    (:class:`engine.events.history.History`, or None), the query being typed (or None) and the profile (or
    None), as of ``now``; trending where nothing of them matches."""
    searches = list(hist.searches) if hist is not None else []
    if query and query.strip():
        searches.insert(0, (query.strip(), now))
    engaged = hist is not None and len(hist) > 0
    if not engaged and not searches:
        scores, parts, _ = rec.trending(mask)
        return scores, parts, "fallback: trending (no history for this user)"
    parts, once = {}, None
    if engaged:
        again, once = _bought(rec, hist)
        parts = _engagement_parts(rec, hist, now, again)
    if searches:
        parts["searches"] = _search_part(rec, searches, mask, now)
    if profile is not None:
        cat = profile.shares("category")
        codes = rec.products.category_codes
        pref = np.array([float(cat.get(str(c), 0.0)) for c in range(len(rec.products.categories))] + [0.0])
        parts["profile"] = norm_max(pref[np.where(codes >= 0, codes, -1)])
    fw = {**FOR_YOU_WEIGHTS, **rec.cfg.for_you_weights}
    parts = {name: fw[name] * p for name, p in parts.items() if fw[name] > 0}
    score = sum(parts.values()) if parts else np.zeros(rec.n)
    if once is not None:
        score = score.copy()
        score[once] = 0.0  # bought, in a category shoppers buy once
    rows = np.flatnonzero(score > 0)
    if not len(rows):
        scores, parts, _ = rec.trending(mask)
        return scores, parts, "fallback: trending (history matches nothing under these filters)"
    source = "for you: " + ", ".join(parts)
    return {"rows": rows, "score": score[rows]}, {n: p[rows] for n, p in parts.items()}, source
