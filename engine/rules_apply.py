"""Rules applied to answers: a ranked list (:func:`apply_rules`), a search (:func:`ruled_query`), offered
suggestions (:func:`recount_suggestions`); the order and the conflicts are stated in :mod:`engine.rules`."""

from __future__ import annotations

import numpy as np

from engine.rule_book import RuleBook
from engine.rules import Rule


def apply_rules(rules: list[Rule], rows: np.ndarray, scores: np.ndarray, products, allowed) -> tuple:
    """(rows, scores, moved): the ranked ``rows`` after the firing ``rules`` (see the module doc); ``allowed``
    (bool per product: filters and the live mask) decides which pinned products may show; ``moved``: row →
    the rules that changed its place."""
    rows, scores = np.asarray(rows, dtype=np.int64).copy(), np.asarray(scores, dtype=np.float64).copy()
    moved: dict[int, list[str]] = {}
    spread = float(scores.std()) if len(scores) > 1 and scores.std() > 0 else 1.0
    for r in rules:
        for b in r.consequence.get("boost", []):
            code = products.codes_of(b["field"], b["value"])
            if not code:
                continue
            hit = products.column(b["field"])[0][rows] == code[0]
            scores[hit] += b["weight"] * spread
            for row in rows[hit]:
                moved.setdefault(int(row), []).append(r.id)
    order = np.argsort(-scores, kind="stable")
    rows, scores = rows[order], scores[order]
    row_of = products.row_map()
    hidden = {row_of[p] for r in rules for p in r.consequence.get("hide", []) if p in row_of}
    keep = ~np.isin(rows, list(hidden))
    rows, scores = rows[keep], scores[keep]
    pins: dict[int, int] = {}  # position (0-based) → row
    placed: set[int] = set()
    for r in rules:
        for p in r.consequence.get("pin", []):
            row = row_of.get(p["product"])
            if row is None or row in hidden or row in placed or not allowed[row]:
                continue
            pos = p["position"] - 1
            while pos in pins:
                pos += 1
            pins[pos] = row
            placed.add(row)
            moved.setdefault(row, []).append(r.id)
    if not pins:
        return rows, scores, moved
    rest = [(int(x), float(s)) for x, s in zip(rows, scores) if int(x) not in placed]
    out: list[tuple[int, float]] = []
    top = float(scores.max()) if len(scores) else 0.0
    for pos in range(len(rest) + len(pins)):
        if pos in pins:
            out.append((pins[pos], top))
        elif rest:
            out.append(rest.pop(0))
    out += [(row, top) for pos, row in sorted(pins.items()) if pos >= len(out)]
    return np.array([x for x, _ in out], dtype=np.int64), np.array([s for _, s in out]), moved


def ruled_query(version, book: RuleBook, text: str, k: int, offset: int, filters, mask, run, explain: bool = False):
    """The answer of one search with the rules of ``book`` applied; ``run(k, offset)`` ranks (the plain
    query).  The list is ranked deep enough that hidden products are backfilled and pins find their place."""
    import dataclasses

    from core.types import SearchResult

    fired = book.firing(text, filters)
    number = book.version  # of the rules firing just read
    if not fired:
        res = run(k, offset)
        if number:
            res.rules = {"version": number, "fired": []}
        return res
    extra = sum(len(r.consequence.get("hide", [])) + len(r.consequence.get("pin", [])) for r in fired)
    res = run(min(offset + k + extra, version.cfg.search.max_k), 0)
    redirect = next((r.consequence["redirect"] for r in fired if "redirect" in r.consequence), None)
    info = {"version": number, "fired": [r.id for r in fired], "redirect": redirect}
    if res.reason:
        return dataclasses.replace(res, k=k, offset=offset, rules=info)
    p = version.products
    rows = np.array([p.row_of(h.product_id) for h in res.hits], dtype=np.int64)
    allowed = p.mask(**filters) if filters else np.ones(len(p), dtype=bool)
    if mask is not None:
        allowed &= np.asarray(mask, dtype=bool)
    allowed = version.with_live(allowed)
    new_rows, new_scores, moved = apply_rules(fired, rows, [h.score for h in res.hits], p, allowed)
    by_row = dict(zip(rows.tolist(), res.hits))
    hits = []
    for i in range(offset, min(offset + k, len(new_rows))):
        row = int(new_rows[i])
        h = by_row.get(row) or version.hits(SearchResult(np.array([row]), np.array([new_scores[i]], np.float32)))[0]
        ex = h.explain
        if explain and row in moved:
            ex = {**(h.explain or {"note": "not in the ranked list: placed by a rule"}), "rules": moved[row]}
        hits.append(dataclasses.replace(h, rank=i + 1, score=float(new_scores[i]), rules=moved.get(row), explain=ex))
    return dataclasses.replace(res, hits=hits, k=k, offset=offset, rules=info)


def recount_suggestions(version, suggestions: list, hidden: set[str], min_match: float, min_hits: int) -> list:
    """Suggestions with their hit counts taken again without the products rules hide everywhere (and the
    deleted ones); those left with fewer than ``min_hits`` are dropped."""
    import dataclasses

    p = version.products
    mask = version.with_live(np.ones(len(p), dtype=bool))
    row_of = p.row_map()
    mask[[row_of[x] for x in hidden if x in row_of]] = False
    out = []
    for s in suggestions:
        n = len(version.bm25.matching(s.text, min_match, mask))
        if n >= min_hits:
            out.append(dataclasses.replace(s, hits=n))
    return out
