"""Facet counts over a query's matching set: category, brand (values with counts) and a price histogram.

The matching set of a hybrid engine (docs/search-page.md): the products holding at least
``search.facet_min_match`` of the query's word tokens (Elasticsearch's minimum_should_match; the rule a
suggestion's hit count uses), the ``search.facet_depth`` best of them by BM25; deleted products never.  The
dense stage ranks the whole catalog and has no matching set, so a hit only it found is shown but not counted;
and the set never depends on the filters (the ranked hits do), so ticking a value keeps the others' counts.
Counts are **disjunctive**: a facet's counts apply every filter
but its own, so a shopper who ticked one brand still sees the other brands and how many each would add.
Everything is numpy over the matching rows' catalog columns; a catalog without a column gets no facet for it.
"""

from __future__ import annotations

import math
import time

import numpy as np

from engine.types import QueryError

FACETS = ("category", "brand", "price")


def check_facets(names) -> list[str]:
    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    names = [n.strip() for x in names for n in str(x).split(",") if n.strip()]
    bad = [n for n in names if n not in FACETS]
    if bad:
        raise QueryError("facets", f"unknown facet {bad[0]!r}; facets are {', '.join(FACETS)}")
    return list(dict.fromkeys(names))


def round_step(span: float, buckets: int) -> float:
    """A round bucket width (1, 2 or 5 × 10^n) giving about ``buckets`` buckets over ``span``."""
    raw = max(span / max(buckets, 1), 1e-9)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _filter_masks(p, rows: np.ndarray, filters: dict) -> dict[str, np.ndarray]:
    """Per filtered facet, which matching rows pass that filter."""
    out = {}
    for name in ("category", "brand"):
        if filters.get(name) is not None:
            out[name] = p.mask(rows=rows, **{name: filters[name]})
    if filters.get("price_min") is not None or filters.get("price_max") is not None:
        out["price"] = p.mask(price_min=filters.get("price_min"), price_max=filters.get("price_max"), rows=rows)
    return out


def matching_set(version, text: str) -> np.ndarray:
    """The rows facets count over (see the module doc)."""
    cfg = version.cfg.search
    bm25 = version.bm25
    rows = bm25.matching(text, cfg.facet_min_match, version.with_live(None))
    if len(rows) > cfg.facet_depth:
        scores = bm25.scores(text)[rows]
        rows = rows[np.argpartition(-scores, cfg.facet_depth - 1)[: cfg.facet_depth]]
    return rows


def facet_counts(version, text: str, filters: dict | None, names: list[str]) -> dict:
    """``{"matched": n, "ms": t, "facets": {name: ...}}`` for the facets ``names`` of query ``text``."""
    t0 = time.perf_counter()
    cfg = version.cfg.search
    p = version.products
    rows = matching_set(version, text)
    filters = filters or {}
    masks = _filter_masks(p, rows, filters)
    out: dict = {}
    for name in names:
        keep = np.ones(len(rows), dtype=bool)
        for other, m in masks.items():
            if other != name:
                keep &= m
        r = rows[keep]
        if name == "price":
            block = _histogram(p.prices[r], cfg.price_buckets, filters)
        else:
            codes, vocab = p.column(name)
            block = _values(codes[r], vocab, p.codes_of(name, filters.get(name) or []), cfg.facet_values)
        if block is not None:
            out[name] = block
    return {"matched": int(len(rows)), "ms": round((time.perf_counter() - t0) * 1000, 3), "facets": out}


def _values(codes: np.ndarray, vocab, selected: list[int], limit: int) -> list[dict] | None:
    """The ``limit`` largest counts and every selected value (``selected``: their codes)."""
    if not len(vocab):
        return None  # the catalog has no such column
    counts = np.bincount(codes[codes >= 0], minlength=len(vocab))
    order = np.lexsort((np.arange(len(vocab)), -counts))
    shown = [int(i) for i in order[:limit] if counts[i] > 0]
    shown += [c for c in selected if c not in shown]
    return [{"value": vocab[i], "count": int(counts[i]), "selected": i in selected} for i in shown]


def _histogram(prices: np.ndarray, buckets: int, filters: dict) -> dict | None:
    prices = prices[np.isfinite(prices)]
    if not len(prices):
        return None
    lo, hi = float(prices.min()), float(prices.max())
    step = round_step(hi - lo, buckets)
    start = math.floor(lo / step) * step
    n = max(1, math.ceil((hi - start) / step + 1e-9))
    if start + n * step <= hi:
        n += 1
    edges = start + step * np.arange(n + 1)
    counts, _ = np.histogram(prices, bins=edges)
    return {
        "min": lo,
        "max": hi,
        "selected": [filters.get("price_min"), filters.get("price_max")],
        "buckets": [
            {"min": float(a), "max": float(b), "count": int(c)} for a, b, c in zip(edges[:-1], edges[1:], counts)
        ],
    }
