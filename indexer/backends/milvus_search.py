"""Searching a Milvus collection (:mod:`indexer.backends.milvus` builds it): the bm25 stage over each token field
(oversampled, scaled by its best score and weighted as the local index combines fields), the dense stage, and
filters and masks as boolean expressions.
"""

from __future__ import annotations

import json

import numpy as np

from core.types import SearchResult
from indexer.backends.milvus import MAX_LIMIT, token_text, check_collection

_EMPTY = SearchResult(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def quote(value: str) -> str:
    """A string literal for a Milvus boolean expression."""
    return json.dumps(value, ensure_ascii=False)


def filters_expr(filters: dict | None) -> str:
    """``{"category": .., "brand": .., "price_min": .., "price_max": ..}`` (checked by
    :func:`engine.query_input.check_filters`) as a Milvus boolean expression ("" for none)."""
    filters = filters or {}
    parts = []
    for key in ("category", "brand"):
        v = filters.get(key)
        if v is None:
            continue
        values = [v] if isinstance(v, str) else list(v)
        parts.append(f"{key} in [{', '.join(quote(x) for x in values)}]")
    if filters.get("price_min") is not None or filters.get("price_max") is not None:
        parts.append("has_price == true")  # a product without a price fails a price filter
        if filters.get("price_min") is not None:
            parts.append(f"price >= {float(filters['price_min'])!r}")
        if filters.get("price_max") is not None:
            parts.append(f"price <= {float(filters['price_max'])!r}")
    return " and ".join(parts)


class ExprMask(np.ndarray):
    """A product mask that also carries the Milvus expression it came from (filters).  Anything derived from
    it (``&``, slicing) is a plain mask again: the expression is only trusted where it was attached."""

    expr: str | None = None

    @classmethod
    def wrap(cls, mask: np.ndarray, expr: str) -> "ExprMask":
        m = np.asarray(mask, dtype=bool).view(cls)
        m.expr = expr
        return m

    def __array_finalize__(self, obj):
        self.expr = None


def mask_expr(mask: np.ndarray | None) -> str:
    """The expression for a product mask: its filters' expression when it carries one, else the rows it keeps
    (or drops, whichever list is shorter)."""
    if mask is None:
        return ""
    if isinstance(mask, ExprMask) and mask.expr is not None:
        return mask.expr
    mask = np.asarray(mask, dtype=bool)
    keep = np.flatnonzero(mask)
    if len(keep) == len(mask):
        return ""
    if len(keep) <= len(mask) - len(keep):
        return f"row in [{', '.join(map(str, keep.tolist()))}]" if len(keep) else "row < 0"
    return f"row not in [{', '.join(map(str, np.flatnonzero(~mask).tolist()))}]"


def _as_result(hits, dtype) -> SearchResult:
    """One query's Milvus hits as rows (the primary key is the product row) and scores, in Milvus's order."""
    return SearchResult(
        np.fromiter((h["id"] for h in hits), dtype=np.int64, count=len(hits)),
        np.fromiter((h["distance"] for h in hits), dtype=dtype, count=len(hits)),
    )


class MilvusStages:
    """The bm25 and dense stages answered by a Milvus collection, for one engine version."""

    def __init__(self, cfg, bm25, client, collection: str):
        self.cfg, self.bm25, self.client, self.collection = cfg, bm25, client, collection
        self.fields = dict(bm25.weights)
        mc = cfg.search.milvus
        self.oversample = max(1, int(mc.bm25_oversample))
        self.k1 = float(cfg.bm25.k1)
        self.dense_params = {"metric_type": "IP", "params": {"nprobe": mc.nprobe}}

    @classmethod
    def open(cls, cfg, bm25, dense_build: str | None = None) -> "MilvusStages":
        """The config's collection, checked against the local build the engine reads (same BM25 build, same
        dense build)."""
        client, name = check_collection(cfg, bm25.manifest.get("build_id"), dense_build)
        return cls(cfg, bm25, client, name)

    def bm25_search(self, text: str, k: int, mask: np.ndarray | None = None) -> SearchResult:
        tokens = self.bm25.tokenizer.tokenize_fields(text, tuple(self.fields))
        expr = mask_expr(mask)
        multi = len(self.fields) > 1
        # deeper than asked: products tied at the k-th score come back too, so ties break by row as locally
        limit = min(MAX_LIMIT, k * self.oversample)
        per_field: dict[str, SearchResult] = {}
        queries: dict[str, str] = {}
        for f in self.fields:
            vocab = self.bm25.retrievers[f].vocab_dict
            toks = [t for t in tokens[f] if t in vocab]
            if toks:
                queries[f] = token_text(toks)
                per_field[f] = self._field_hits(f, queries[f], limit, expr)
        if multi and len(per_field) > 1:
            # a product in one field's list but below another's: fetch its exact score in that field too,
            # so every candidate is scored as the local index scores it (all fields summed)
            union = np.unique(np.concatenate([r.rows for r in per_field.values()]))
            for f, got in per_field.items():
                missing = np.setdiff1d(union, got.rows)
                if len(missing):
                    rows_expr = f"row in [{', '.join(map(str, missing.tolist()))}]"
                    more = self._field_hits(
                        f, queries[f], len(missing), f"({expr}) and {rows_expr}" if expr else rows_expr
                    )
                    per_field[f] = SearchResult(
                        np.concatenate([got.rows, more.rows]), np.concatenate([got.scores, more.scores])
                    )
        rows, scores = [], []
        for f, got in per_field.items():
            if not len(got.rows):
                continue
            best = float(got.scores.max())
            if multi and best <= 0:
                continue
            # Milvus's BM25 keeps the (k1 + 1) factor that bm25s's lucene variant drops: the same ranking, the
            # scores (which the learned ranker reads) brought to the local index's scale
            rows.append(got.rows)
            scores.append(got.scores * (self.fields[f] / best if multi else 1.0 / (1.0 + self.k1)))
        if not rows:
            return _EMPTY
        rows, inverse = np.unique(np.concatenate(rows), return_inverse=True)
        scores = np.bincount(inverse, weights=np.concatenate(scores))  # each product's fields summed
        # Milvus computes in float32 and scales BM25 by (k1 + 1): equal local scores may differ in the last
        # bits here, so ties are read at 6 significant digits and broken by row, as the local index does
        tie = np.round(scores / scores.max(), 6)
        order = np.lexsort((rows, -tie))[:k]
        return SearchResult(rows[order], scores[order].astype(np.float32))

    def _field_hits(self, f: str, query: str, limit: int, expr: str) -> SearchResult:
        hits = self.client.search(
            self.collection,
            data=[query],
            anns_field=f"{f}_sparse",
            limit=limit,
            filter=expr,
            search_params={"metric_type": "BM25"},
        )[0]
        return _as_result(hits, np.float64)

    def dense_search(self, qvecs: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[SearchResult]:
        q = np.ascontiguousarray(np.atleast_2d(qvecs), dtype=np.float32)
        res = self.client.search(
            self.collection,
            data=q.tolist(),
            anns_field="vector",
            limit=min(k, MAX_LIMIT),
            filter=mask_expr(mask),
            search_params=self.dense_params,
        )
        return [_as_result(hits, np.float32) for hits in res]

    def count(self) -> int:
        got = self.client.query(self.collection, filter="row >= 0", output_fields=["count(*)"])
        return int(got[0]["count(*)"])
