"""Recommendations beside search: ``similar``, ``bought_together``, ``for_you``, ``trending``.

:class:`Recommender` answers :meth:`engine.search.SearchEngine.recommend` on one index version, from the
models :mod:`finetune.recs` built (:mod:`engine.recs`: co-visit and co-basket neighbours, ALS item factors), the
catalog's own content (the dense vectors of titles, BM25 over a title) and the event store read at request
time (a user's recent engagements and searches; trending counts kept current online).  Every kind applies the
filters and the deleted products as search does, and says in ``source`` what produced the list (and in
``explain``, per product, each part's score) — a fallback is named, never silent:

- ``similar``: content (dense cosine + BM25 of the product's title, normalized) plus behaviour (co-visit
  neighbours, already shrunk toward 0 for rare pairs); never the product itself or a product with the same
  title.
- ``bought_together``: the product's co-basket neighbours (without pairs of its own, those of its most similar
  products), the ALS similarity of who engaged with it, and the categories that go into one basket with its
  own (each product there by recent popularity), mixed by ``recs.together_weights``; near-duplicates of the
  product (titles matching most of its own) demoted; below ``recs.min_baskets`` in the build or with nothing
  found, trending outside the product's category.
- ``for_you``: from the user's recent engagements (ALS vector solved from them now, and their co-visit and
  co-basket neighbours) and recent searches (each search's BM25 results and those results' complements),
  weighted by recency, their taste (each product's (category, brand) share of the history), plus the
  profile's category shares and what they buy again, mixed by
  ``recs.for_you_weights``; products bought in categories shoppers do not buy again are left out.  Unknown or
  cold users get trending.
- ``trending``: gain-weighted engagements decayed with ``recs.trending_half_life_hours`` (read from the store,
  re-read every ``trending_refresh_seconds``, and updated at once by this process's own events); with no
  recent engagement at all, all-time popularity.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from core.config.recs import TOGETHER_WEIGHTS
from engine.for_you import for_history, norm_max
from engine.query_input import check_filters, check_int
from engine.recs import GAINS
from engine.rerank import stage_lookup
from engine.types import Hit, HitList, QueryError

KINDS = ("similar", "bought_together", "for_you", "trending")
POOL = 100  # content candidates per source


class RecommendError(QueryError):
    """A recommendation argument that cannot be answered; ``param`` names it (kind, product, user, k, ...)."""


@dataclass
class Recommendations(HitList):
    hits: list[Hit]
    kind: str
    source: str  # what produced the list: "behaviour + content", "fallback: trending (cold user)", ...
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "source": self.source,
            "hits": [h.to_dict() for h in self.hits],
            "timings_ms": self.timings_ms,
        }


class Recommender:
    """Recommendations on one index version (``version``: :class:`engine.version.IndexVersion`)."""

    def __init__(self, version, models, cfg, clock=time.time, paused: str | None = None):
        """``paused``: why the built models are not used (a user was forgotten after their build,
        :mod:`engine.forgotten`); every list then says so in its ``source``."""
        self.v = version
        self.models = None if paused else models  # engine.recs.RecModels or None
        self.paused = paused
        self.cfg = cfg  # core.config.RecsConfig
        self.clock = clock
        self.products = version.products
        self.n = len(self.products)
        self._trend = None
        self._trend_read = -np.inf
        self._trend_t = 0.0
        self._lock = threading.Lock()
        titles = self.products.titles
        self._title = lambda r: "".join(titles[int(r)].split()).lower()
        repeat = set((self.models.card.get("repeat_categories") if self.models else None) or [])
        self.repeat_categories = np.array([c in repeat for c in self.products.categories] + [False], dtype=bool)

    # -- the entry point ---------------------------------------------------------------------------------
    def recommend(
        self, kind, product_id=None, user_id=None, query=None, k=10, filters=None, explain=False, hide=frozenset()
    ):
        t0 = time.perf_counter()
        if kind not in KINDS:
            raise RecommendError("kind", f"unknown kind {kind!r}; use {', '.join(KINDS)}")
        k = check_int(k, "k", 1, self.v.cfg.search.max_k)
        filters = check_filters(filters)
        mask = self.products.mask(**filters) if filters else np.ones(self.n, dtype=bool)
        mask = self.v.with_live(mask)
        mask[self.products.superseded_rows()] = False
        row_of = self.products.row_map()
        mask[[row_of[p] for p in hide if p in row_of]] = False  # merchandising rules' hides (engine.rules)
        row = None
        if kind in ("similar", "bought_together"):
            row = self._row(product_id)
        if user_id is not None and (not isinstance(user_id, str) or not user_id.strip()):
            raise RecommendError("user", f"must be a non-empty string, got {user_id!r}")
        if query is not None and not isinstance(query, str):
            raise RecommendError("query", f"must be a string, got {type(query).__name__}")
        if kind == "similar":
            scores, parts, source = self.similar(row, mask)
        elif kind == "bought_together":
            scores, parts, source = self.bought_together(row, mask)
        elif kind == "for_you":
            scores, parts, source = self.for_you(user_id, query, mask)
        else:
            scores, parts, source = self.trending(mask)
        hits = self._hits(scores, parts, mask, k, explain, exclude=row)
        if self.paused:
            source = f"{source}; {self.paused}"
        return Recommendations(hits, kind, source, {"total": round((time.perf_counter() - t0) * 1000, 2)})

    def _row(self, product_id) -> int:
        if not isinstance(product_id, str) or not product_id.strip():
            raise RecommendError("product", f"a product id is needed for this kind, got {product_id!r}")
        try:
            row = self.products.row_of(product_id)
        except KeyError:
            raise RecommendError("product", f"unknown product {product_id!r} (not in the index)") from None
        live = self.v.live
        if live is not None and not live[row]:
            raise RecommendError("product", f"product {product_id!r} was deleted")
        return row

    def _hits(self, scores: dict, parts: dict, mask, k: int, explain: bool, exclude=None) -> list[Hit]:
        """The top ``k`` of ``scores`` (``scores["rows"]`` with their ``scores["score"]``) within ``mask``,
        without ``exclude`` and products titled exactly like it, each title once."""
        rows, score = scores["rows"], scores["score"]
        keep = mask[rows] & (score > 0)
        if exclude is not None:
            keep &= rows != exclude
        idx = np.flatnonzero(keep)
        pool = min(len(idx), 4 * k + 50)  # enough to skip duplicate titles, without sorting the catalog
        if pool < len(idx):
            idx = idx[np.argpartition(-score[idx], pool - 1)[:pool]]
        idx = idx[np.argsort(-score[idx], kind="stable")]
        ids, titles = self.products.ids, self.products.titles
        seen = {self._title(exclude)} if exclude is not None else set()
        out = []
        for i in idx:
            r = int(rows[i])
            t = self._title(r)
            if t in seen:
                continue  # a duplicate listing of the same title
            seen.add(t)
            ex = {name: round(float(p[i]), 4) for name, p in parts.items()} if explain else None
            out.append(Hit(ids[r], titles[r], float(score[i]), len(out) + 1, ex, **self.products.columns(r)))
            if len(out) == k:
                break
        return out

    # -- content -----------------------------------------------------------------------------------------
    def _vector(self, row: int) -> np.ndarray:
        return np.asarray(self.v.facets().vectors[row], dtype=np.float32)

    def content(self, row: int, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, dense cosine, BM25 share) of the products nearest to ``row``'s title."""
        lists = []
        if "dense" in self.v.cfg.search.stages or self.v.cfg.rerank.model:
            lists.append(self.v.first_stages.dense("dense", self._vector(row)[None, :], POOL, mask)[0])
        bm = self.v.first_stages.bm25(self.v.understand(self.products.titles[row]).text, POOL, mask)
        rows = np.unique(np.concatenate([np.asarray(x.rows, dtype=np.int64) for x in [*lists, bm]]))
        dense = np.full(len(rows), np.nan)
        if lists:
            cos, rank = stage_lookup(rows, lists[0])
            dense[rank > 0] = cos[rank > 0]
        miss = np.isnan(dense)
        if miss.any():  # not in the dense list: its cosine straight from the vectors
            dense[miss] = np.asarray(self.v.facets().vectors[rows[miss]], dtype=np.float32) @ self._vector(row)
        score, rank = stage_lookup(rows, bm)
        top = float(np.max(bm.scores)) if len(bm.rows) else 0.0
        share = np.where(rank > 0, score / top, 0.0) if top > 0 else np.zeros(len(rows))
        return rows, dense, share

    # -- kinds -------------------------------------------------------------------------------------------
    def similar(self, row: int, mask):
        rows, dense, bm25 = self.content(row, mask)
        beh_rows, beh = self.models.similar.of(row) if self.models else (np.zeros(0, np.int64), np.zeros(0))
        allr = np.unique(np.concatenate([rows, beh_rows.astype(np.int64)]))
        d = np.zeros(len(allr))
        b25 = np.zeros(len(allr))
        pos = np.searchsorted(allr, rows)
        d[pos], b25[pos] = dense, bm25
        extra = ~np.isin(allr, rows)
        if extra.any():
            d[extra] = np.asarray(self.v.facets().vectors[allr[extra]], dtype=np.float32) @ self._vector(row)
        b = np.zeros(len(allr))
        b[np.searchsorted(allr, beh_rows)] = beh
        score = np.clip(d, 0, None) + 0.2 * b25 + b
        source = "behaviour + content" if len(beh_rows) else "content (no co-visits for this product)"
        return {"rows": allr, "score": score}, {"dense": d, "bm25": b25, "behaviour": b}, source

    def bought_together(self, row: int, mask):
        m = self.models
        if m is None or m.conversions < self.cfg.min_baskets:
            have = 0 if m is None else m.conversions
            return self._trending_outside(
                row, mask, f"fallback: trending outside its category (too few baskets: {have} < {self.cfg.min_baskets})"
            )
        w = {**TOGETHER_WEIGHTS, **self.cfg.together_weights}
        parts = {}
        nb, sc = m.together.of(row)
        own = np.zeros(self.n)
        own[nb] = sc
        source = "bought together"
        if not len(nb):  # the pairs of its most similar products, weighted by how similar
            sim, sim_parts, _ = self.similar(row, np.ones(self.n, dtype=bool))
            top = np.argsort(-sim["score"])[:10]
            own = m.together.spread(sim["rows"][top], sim["score"][top], self.n)
            source = "bought together with similar products" if own.any() else "category complements"
            near, share = sim["rows"], sim_parts["bm25"]
        else:
            bm = self.v.first_stages.bm25(self.v.understand(self.products.titles[row]).text, POOL, None)
            near, share = np.asarray(bm.rows), norm_max(np.asarray(bm.scores, dtype=np.float64))
        cats = self.products.category_codes
        lift = (m.card.get("category_lift") or {}).get(self.products.categories[cats[row]] if cats[row] >= 0 else "")
        by_code = np.array([float((lift or {}).get(c, 0.0)) for c in self.products.categories] + [0.0])
        cat_lift = by_code[np.where(cats >= 0, cats, -1)]
        together = norm_max(own)
        if lift and len(nb):  # an own pair across categories bought together less than chance (one shopper's
            # phone and socks) counts as much as the two categories go together; the same category, and products
            # without one, as they are
            together *= np.where((cats == cats[row]) | (cats < 0), 1.0, np.minimum(1.0, cat_lift))
        parts["together"] = w["together"] * together
        if m.items is not None and m.items[row].any():  # shoppers who engaged with it also engaged with these
            parts["als"] = w["als"] * norm_max(np.clip(m.items @ m.items[row], 0, None))
        if lift:  # categories that go into one basket with this one, each product by its recent popularity
            parts["category"] = w["category"] * norm_max(cat_lift) * (0.5 + 0.5 * norm_max(self.trend_counts()))
        score = sum(parts.values())
        score[near[share >= self.cfg.duplicate_share]] *= self.cfg.substitute_factor  # the same item again
        rows = np.flatnonzero((score > 0) & mask)
        if not len(rows):
            return self._trending_outside(row, mask, "fallback: trending outside its category (no pairs)")
        if source != "bought together":
            source = f"fallback: {source}"
        return {"rows": rows, "score": score[rows]}, {n: p[rows] for n, p in parts.items()}, source

    def _trending_outside(self, row: int, mask, source: str):
        cats = self.products.category_codes
        other = mask & ((cats != cats[row]) | (cats[row] < 0))
        scores, parts, _ = self.trending(other)
        return scores, parts, source

    def trending(self, mask):
        t = self.trend_counts()
        rows = np.flatnonzero(mask)
        score = t[rows]
        if not (score > 0).any():  # nothing engaged lately: all-time popularity, then catalog order
            stats = self._all_time()
            score = stats[rows] if stats is not None else np.zeros(len(rows))
            src = "fallback: all-time popularity (no recent engagements)"
            if not (score > 0).any():
                score = 1.0 / (1.0 + np.arange(len(rows)))
                src = "fallback: catalog order (no engagements at all)"
            return {"rows": rows, "score": score}, {"popularity": score}, src
        return {"rows": rows, "score": score}, {"trending": score}, "trending"

    def for_you(self, user_id, query, mask):
        from engine.events.history import recent_history

        hist = None
        ue = self._events()
        if user_id is not None and ue is not None:
            hist = recent_history(ue, user_id, self.cfg.history_events, self.cfg.history_searches)
        profile = self.v.profile(user_id) if user_id is not None and hist is not None else None
        return self.for_history(hist, query, mask, profile)

    def for_history(self, hist, query, mask, profile=None, now: float | None = None):
        """For-you scores of a history (:class:`engine.events.history.History`, or None), the query being
        typed (or None) and the user's profile (or None), as of ``now`` (default the clock)."""
        return for_history(self, hist, query, mask, profile, self.clock() if now is None else now)

    def top(self, scores: dict, mask, k: int, exclude=None) -> np.ndarray:
        """The rows :meth:`recommend` would list for ``scores`` (evaluation)."""
        row_of = self.products.row_map()
        return np.array([row_of[h.product_id] for h in self._hits(scores, {}, mask, k, False, exclude)], dtype=np.int64)

    def set_trending(self, counts: np.ndarray, t: float) -> None:
        """Trending counts as of time ``t`` given from outside (evaluation replaying a log); never re-read."""
        with self._lock:
            self._trend, self._trend_t, self._trend_read = np.asarray(counts, dtype=np.float64), t, np.inf

    # -- trending counts ---------------------------------------------------------------------------------
    def detach(self) -> None:
        """Stop listening to the event store (a newer recommender took over)."""
        ue = self._events()
        if ue is not None and self.record in ue.listeners:
            ue.listeners.remove(self.record)

    def _events(self):
        try:
            return self.v.user_events()
        except Exception:  # noqa: BLE001 — no event store configured or reachable: no personal history
            return None

    def _all_time(self):
        ue = self._events()
        if ue is None:
            return None
        counts = ue.stats().counts  # [n, 4] impressions, clicks, carts, purchases
        return counts[:, 1] + 2 * counts[:, 2] + 3 * counts[:, 3]

    def trend_counts(self) -> np.ndarray:
        """Decayed gain-weighted engagements per product row, as of now."""
        from engine.events.history import decayed_engagements

        now = self.clock()
        hl = self.cfg.trending_half_life_hours * 3600.0
        with self._lock:
            if self._trend is None or time.monotonic() - self._trend_read > self.cfg.trending_refresh_seconds:
                ue = self._events()
                if ue is not None and self.record not in ue.listeners:
                    ue.listeners.append(self.record)
                since = now - self.cfg.trending_days * 86400.0
                self._trend = (
                    decayed_engagements(ue, self.n, since, now, hl, GAINS) if ue is not None else np.zeros(self.n)
                )
                self._trend_read, self._trend_t = time.monotonic(), now
            return self._trend * 2.0 ** (-max(now - self._trend_t, 0.0) / hl)

    def record(self, rows: np.ndarray, codes: np.ndarray, ts: np.ndarray) -> None:
        """Credited events this process stored (a :class:`engine.events.UserEvents` listener): trending counts
        them at once (other processes' at the next re-read)."""
        from core.formats.clicklog import EVENTS

        gain = np.array([GAINS.get(e, 0.0) for e in EVENTS])[np.asarray(codes, dtype=np.int64)]
        with self._lock:
            if self._trend is not None and len(rows):
                hl = self.cfg.trending_half_life_hours * 3600.0
                w = gain * 2.0 ** (-(self._trend_t - np.asarray(ts, dtype=np.float64)) / hl)
                np.add.at(self._trend, np.asarray(rows, dtype=np.int64), w)
