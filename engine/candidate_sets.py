"""What the final ranker orders: per query, the union of the bm25 and dense top ``rerank.depth`` with their stage
scores and ranks and the cross-encoder's scores (every pair of a batch of queries scored in one run), and a cache
of recent queries' sets (the same for every user: one entry serves every shopper's ranking).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

from engine.features import Candidates
from engine.text_match import text_match
from engine.types import RERANK_FIRST_STAGES
from core.types import SearchResult
from core.config import RerankConfig


def score_candidate_sets(
    texts: Sequence[str], both: list, bm25, score_pairs: Callable, r: RerankConfig, timings: dict | None = None
) -> list[Candidates]:
    """:class:`Candidates` per query from :func:`engine.first_stages.stage_candidates`'s ``both``, with
    cross-encoder scores (``score_pairs(queries, titles)``) of all queries' pairs in one run, and their
    text-match features (:func:`engine.text_match.text_match` over ``bm25``, the BM25 index).  The stage scores
    and ranks are looked up in each stage's top ``r.lookup_depth`` where set (``both``'s full lists must be at least
    that long: :meth:`engine.version.IndexVersion.candidate_sets` asks for them), else in the top ``r.depth``."""
    titles = bm25.products.titles
    pair_q = [t for t, (c, _, _) in zip(texts, both) for _ in range(len(c.rows))]
    pair_t = titles.take(row for c, _, _ in both for row in c.rows)
    t0 = time.perf_counter()
    ce = score_pairs(pair_q, pair_t)
    if timings is not None:
        timings["cross_encoder"] = (time.perf_counter() - t0) * 1000
        timings["pairs"] = len(pair_q)
    out, start = [], 0
    deep = r.lookup_depth or r.depth
    for text, (fused, _, lists) in zip(texts, both):
        # stage scores looked up in the top `deep` of each list (off: the top `depth` that chose the candidates),
        # never deeper: the features must not depend on how deep a request asked (a long page fetches longer lists)
        seen = [SearchResult(x.rows[:deep], x.scores[:deep]) for x in lists]
        cand = Candidates.from_stages(fused, seen, lists, RERANK_FIRST_STAGES, r.first_stage, deep)
        cand.query = text
        cand.ce = ce[start : start + len(cand.rows)].astype(np.float64)
        cand.match = text_match(bm25, text, cand.rows)
        start += len(cand.rows)
        out.append(cand)
    return out


def add_base_cosine(
    cands: list[Candidates], encode: Callable[[list[str]], np.ndarray], vectors: np.ndarray, timings: dict | None = None
) -> None:
    """Each candidate's cosine to its query under the zero-shot encoder (``rerank.base_cosine``): the queries
    embedded in one batch by ``encode``, the products' unit vectors (``vectors``, by row: the ``dense-base``
    index's), one matrix-vector product per query."""
    if not cands:
        return
    t0 = time.perf_counter()
    q = encode([c.query for c in cands])
    for c, v in zip(cands, q):
        c.base = (np.asarray(vectors[c.rows], dtype=np.float32) @ np.asarray(v, dtype=np.float32)).astype(np.float64)
    if timings is not None:
        timings["base_cosine"] = (time.perf_counter() - t0) * 1000


class CandidateCache:
    """The candidate sets of the ``size`` most recently asked queries, keyed by text, filters, depth and the
    deleted list's signature (a delete makes every older entry unreachable)."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_many(self, texts: list[str], key, deep: int, sig, compute: Callable, timings: dict) -> list[Candidates]:
        """The sets of ``texts``: cached ones, and ``compute(missing_texts)`` for the rest (then cached).
        ``key`` is None when the mask cannot be named (an explicit mask): no caching then."""
        if not self.size or key is None:
            return compute(texts)
        keys = [(t, key, deep, sig) for t in texts]
        with self._lock:
            found = {kk: self._entries[kk] for kk in keys if kk in self._entries}
            for kk in found:
                self._entries.move_to_end(kk)
        missing = [t for t, kk in zip(texts, keys) if kk not in found]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        timings["cache_hits"] = len(texts) - len(missing)
        if missing:
            for t, c in zip(missing, compute(missing)):
                found[(t, key, deep, sig)] = c
            with self._lock:
                for kk in keys:
                    self._entries[kk] = found[kk]
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return [found[kk] for kk in keys]
