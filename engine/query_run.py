"""One call of ``query_batch`` on an index version: the arguments checked (:mod:`engine.query_input`), the texts
cleaned and understood, the filters and deleted products turned into one mask, each query's candidates ranked
(reranked and personalized when the config has a cross-encoder, fused first stages otherwise), and the answers
with their timings and the versions that gave them.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from engine.query_input import NOTHING_TO_SEARCH, check_filters, check_int, check_personalize, clean_text, searchable
from engine.types import QueryError, QueryResult, SearchResult


class QueryRun:
    """The checked arguments of one ``query_batch`` call on ``version``; :meth:`answer` runs it."""

    def __init__(self, version, texts, k, offset, filters, mask, user_ids, personalize, variant=None):
        self.t_start = time.perf_counter()
        self.version = version
        self.variant = variant
        sc = version.cfg.search
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise QueryError("q", "query_batch takes a list of query strings")
        self.k = check_int(k, "k", 1, sc.max_k)
        self.offset = check_int(offset, "offset", 0, sc.max_k - self.k)
        self.personalize = check_personalize(personalize)
        user_ids = [None] * len(texts) if user_ids is None else list(user_ids)
        if len(user_ids) != len(texts):
            raise QueryError("user", f"{len(user_ids)} user ids for {len(texts)} queries")
        for u in user_ids:
            if u is not None and (not isinstance(u, str) or not u.strip()):
                raise QueryError("user", f"must be a non-empty string, got {u!r}")
        self.user_ids = user_ids
        self.cleaned = [clean_text(t, sc.max_query_chars) for t in texts]
        t_u = time.perf_counter()
        self.rewrites = [version.understand(t) for t, _ in self.cleaned]
        self.t_understood = (time.perf_counter() - t_u) * 1000
        self.filters = check_filters(filters)
        self.key, self.mask = self._mask(self.filters, mask)

    def _mask(self, filters: dict | None, mask: np.ndarray | None):
        """The cache key of the filters (None for an explicit mask) and the mask every stage searches under."""
        v = self.version
        key = (
            None
            if mask is not None
            else tuple(sorted((f, tuple(x) if isinstance(x, list) else x) for f, x in (filters or {}).items()))
        )
        fmask = v.products.mask(**filters) if filters else None  # checked above
        if fmask is not None:
            mask = fmask if mask is None else (fmask & np.asarray(mask, dtype=bool))
        mask = v.with_live(mask)
        if fmask is not None and key is not None and v.cfg.search.backend == "milvus":
            from indexer.backends.milvus_search import ExprMask, filters_expr

            mask = ExprMask.wrap(mask, filters_expr(filters))  # Milvus filters by expression, not row lists
        return key, mask

    def _ranked(self, explain: bool, timings: dict) -> dict[int, tuple[SearchResult, list | None]]:
        """Per searchable query (by position): its ranked rows and scores ``k + offset`` deep, and notes."""
        v = self.version
        depth = self.k + self.offset
        todo = [i for i, (t, _) in enumerate(self.cleaned) if searchable(t)]
        ranked: dict[int, tuple[SearchResult, list | None]] = {}
        with np.errstate(all="ignore"):  # a filter that leaves nothing: empty lists, no warnings
            if v.cfg.rerank.model and todo:
                cands = v.cached_candidate_sets(
                    [self.rewrites[i].text for i in todo], self.mask, self.key, v.tail_depth(depth), timings
                )
                t0 = time.perf_counter()
                ranker = v.ranker(self.variant)
                personal = ranker is not None and ranker.uses_personal and self.personalize > 0
                for i, cand in zip(todo, cands):
                    user = self.user_ids[i]
                    profile = v.profile(user) if personal and user is not None else None
                    ranked[i] = v.rank_candidates(cand, depth, profile, self.personalize, explain, variant=self.variant)
                timings["rank"] = (time.perf_counter() - t0) * 1000
            else:
                stages = v.cfg.search.stages
                for i in todo:
                    t = self.rewrites[i].text
                    res = (
                        v.retrieve_understood(t, depth, stages[0], self.mask)
                        if len(stages) == 1
                        else v.fused(t, depth, stages, self.mask)
                    )
                    ranked[i] = (res, None)
        return ranked

    def answer(self, explain: bool = False) -> list[QueryResult]:
        """The query results, one per text, in order."""
        v, k, offset = self.version, self.k, self.offset
        depth = k + offset
        timings: dict = {"validate": (time.perf_counter() - self.t_start) * 1000}
        ranked = self._ranked(explain, timings)
        timings["understand"] = self.t_understood
        timings["total"] = (time.perf_counter() - self.t_start) * 1000
        timings = {kk: (round(x, 3) if isinstance(x, float) else x) for kk, x in timings.items()}
        versions = v.versions()
        out = []
        for i, (text, truncated) in enumerate(self.cleaned):
            if i not in ranked:
                out.append(
                    QueryResult(
                        [], text, timings, versions, reason=NOTHING_TO_SEARCH, truncated=truncated, k=k, offset=offset
                    )
                )
                continue
            res, notes = ranked[i]
            hits = v.hits(
                SearchResult(
                    res.rows[offset:depth],
                    res.scores[offset:depth],
                    res.lifted[offset:depth] if res.lifted is not None else None,
                    res.relevance[offset:depth] if res.relevance is not None else None,
                ),
                notes[offset:depth] if notes else None,
                first_rank=offset + 1,
            )
            out.append(
                QueryResult(
                    hits,
                    text,
                    timings,
                    versions,
                    truncated=truncated,
                    k=k,
                    offset=offset,
                    searched=self.rewrites[i].text,
                    rewrites=self.rewrites[i].steps,
                )
            )
        return out
