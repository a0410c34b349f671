"""`IndexVersion`: one version of everything a query reads, and the query path over it: query → understanding →
candidates from the first stages (:mod:`engine.first_stages`) → fusion → cross-encoder scores
(:mod:`engine.candidate_sets`) → final ranking with personal features (:mod:`engine.final_rank`) → hits.

A version holds the indexes opened from their resolved build folders, the models (:mod:`engine.models`), the
deleted-products mask, the event store and a cache of recent candidate sets; :class:`engine.search.SearchEngine`
answers from one and swaps to a new one on reload.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.candidate_sets import CandidateCache, add_base_cosine, score_candidate_sets
from engine.features import Candidates
from engine.final_rank import candidate_features, rank_candidates, taste_evidence
from engine.first_stages import FirstStages, LocalFirstStages, MilvusFirstStages, retrieve_batch, stage_candidates
from engine.hybrid import hybrid
from engine.models import VersionModels
from engine.query_input import clean_text, searchable
from engine.query_run import QueryRun
from engine.rerank import CrossEncoder
from engine.types import DENSE_BASE, DENSE_STAGES, RERANK_FIRST_STAGES, STAGES
from engine.types import Hit, QueryError, QueryResult, SearchResult
from engine.understanding import QueryRewriter, Rewrite
from indexer.bm25 import BM25Index
from core.config import Config
from indexer.query_tables import query_tables
from indexer.store import stage_folder, version_root

_EMPTY = SearchResult(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


class IndexVersion:
    """One version of everything a query reads: the indexes (from their resolved build folders), the models,
    the deleted mask.  :class:`engine.search.SearchEngine` answers from one and swaps to a new one on reload."""

    def __init__(
        self,
        cfg: Config,
        bm25: BM25Index,
        verify: bool = True,
        load_models: bool = True,
        previous: "IndexVersion | None" = None,
        number: int = 1,
        root: Path | None = None,
    ):
        self.cfg = cfg
        self.bm25 = bm25
        self.products = bm25.products
        self.root = root or version_root(cfg.index_dir)  # the version folder every stage is opened from
        self.verify = verify
        self.number = number  # 1 for the first version an engine opened, +1 per reload that changed something
        self._lock = threading.RLock()  # lazy loads
        self.models = VersionModels(
            cfg, bm25, self.root, verify, self._lock, previous.models if previous is not None else None
        )
        self._events = None
        self._facets = None
        self._rewriter: QueryRewriter | None = None
        self._live: tuple = (None, None)  # (signature of the deleted list, mask)
        self._cache = CandidateCache(cfg.search.cache_size)
        self._versions: tuple | None = None  # (loaded parts, versions()), see versions()
        self.reload_deleted()
        local = LocalFirstStages(bm25, lambda stage: self.dense_stage(stage)[1])
        self.first_stages: FirstStages = local
        if cfg.search.backend == "milvus":
            from indexer.backends.milvus_search import MilvusStages
            from engine.models import build_id

            dense_build = build_id(stage_folder(cfg.index_dir, "dense", self.root))  # None: none
            self.first_stages = MilvusFirstStages(MilvusStages.open(cfg, bm25, dense_build), local)
        if load_models:
            for stage in cfg.search.stages:
                if stage in DENSE_STAGES:
                    self.dense_stage(stage)
            if cfg.rerank.model:
                self.cross_encoder()
            if cfg.rerank.base_cosine:
                self.dense_stage(DENSE_BASE)  # the zero-shot encoder the base_cos features read
            if cfg.rerank.ranker:
                self.ranker()
            if cfg.query.rewrite:
                self.rewriter().warm()  # query understanding's tables load now, not in the first query
            if cfg.rerank.ranker:
                self.user_events()  # the event store the ranker's features read (profiles, counts)
        self.models.forget_previous()

    # -- models --------------------------------------------------------------------------------------------------
    def dense_stage(self, stage: str):
        """The encoder and FAISS index of a dense stage, loaded once."""
        return self.models.dense_stage(stage)

    def cross_encoder(self) -> CrossEncoder:
        """The config's fine-tuned cross-encoder (``rerank.model``), loaded once."""
        return self.models.cross_encoder()

    def ranker(self, variant: str | None = None):
        """The learned final ranker (``rerank.ranker``), loaded once; None when the config names none.
        ``variant="candidate"``: the online experiment's candidate (``serve.interleave.candidate``)."""
        if variant == "candidate":
            return self.models.candidate()[0]
        if variant not in (None, "serving"):
            raise QueryError("variant", f"must be serving or candidate, got {variant!r}")
        return self.models.ranker()

    def enable_batching(self, window_ms: float, max_pairs: int) -> None:
        """Score the cross-encoder pairs of concurrent queries together (:class:`engine.batching.MicroBatcher`)."""
        self.models.enable_batching(window_ms, max_pairs)

    def score_pairs(self, queries: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        """Cross-encoder scores of (query, title) pairs (through the micro-batcher when it is on)."""
        return self.models.score_pairs(queries, titles)

    def milvus(self):
        """The Milvus collection the bm25 and dense stages search (``search.backend: milvus``)."""
        if not isinstance(self.first_stages, MilvusFirstStages):
            raise ValueError(f"{self.cfg.source or self.cfg.name}: search.backend is not milvus")
        return self.first_stages.collection

    # -- products, users, events ---------------------------------------------------------------------------------
    def facets(self):
        """Per product row: vector (from the dense index), category, brand, k-means group, price band."""
        if self._facets is None:
            with self._lock:
                if self._facets is None:
                    from engine.profiles import ProductFacets

                    cfg = self.cfg
                    dense = self.dense_stage("dense")[1] if "dense" in cfg.search.stages or cfg.rerank.model else None
                    self._facets = ProductFacets.from_tables(self.products, dense, cfg.personal.price_bands)
        return self._facets

    def user_events(self):
        """The event store with profiles (``personal``), opened at first use."""
        if self._events is None:
            with self._lock:
                if self._events is None:
                    from engine.events import UserEvents

                    self._events = UserEvents.open(self.cfg, self.facets(), self.products)
        return self._events

    def use_events(self, events) -> None:
        """Answer from this event store (benchmarks that replay events into an in-memory one)."""
        self._events = events

    def record_event(self, user_id: str, product_id: str, event: str, timestamp=None, query: str | None = None):
        """Record a user's event (impression, click, add_to_cart, purchase); the user's next query sees it.
        Raises :class:`engine.events.EventError` for bad input, :class:`engine.events.PrivacyError` without
        a key to hash user ids with."""
        return self.user_events().record(user_id, product_id, event, timestamp, query)

    def forget_user(self, user_id: str) -> int:
        """Delete every event and the profile of a user; returns the number of events deleted."""
        return self.user_events().forget(user_id)

    def profile(self, user_id: str | None):
        """The stored profile of a user (None: no user, unknown user, or nothing engaged with yet)."""
        if user_id is None:
            return None
        return self.user_events().profile(user_id)

    def reload_deleted(self) -> None:
        """Re-read the deleted products (``<index_dir>/deleted.json``) when the file changed; they are masked in
        every stage.  Called by every query: a delete by any process shows in the next query."""
        from indexer.deleted import deleted_ids, deleted_signature, live_mask

        sig = deleted_signature(self.cfg)
        if sig == self._live[0]:
            return
        with self._lock:
            if sig != self._live[0]:
                self._live = (sig, live_mask(self.products, deleted_ids(self.cfg)))

    @property
    def live(self) -> np.ndarray | None:
        """One bool per product row, False for deleted products (None: nothing deleted)."""
        self.reload_deleted()
        return self._live[1]

    def delete(self, product_ids: Sequence[str]) -> int:
        """Delete products from every stage at once (never returned again; purged at the next rebuild)."""
        from indexer.updates import delete_products

        n = delete_products(self.cfg, product_ids, known=self.products.row_map())
        self.reload_deleted()
        return n

    def with_live(self, mask: np.ndarray | None) -> np.ndarray | None:
        """``mask`` with the deleted products taken out."""
        live = self.live
        if live is None:
            return mask
        return live if mask is None else (live & np.asarray(mask, dtype=bool))

    # -- query understanding -------------------------------------------------------------------------------------
    def rewriter(self) -> QueryRewriter:
        """Query understanding over this version's catalog vocabulary (tables from the BM25 build)."""
        with self._lock:  # built once (an index from before the tables were saved builds them here)
            if self._rewriter is None:
                q = self.cfg.query
                tok = self.bm25.tokenizer
                self._rewriter = QueryRewriter(query_tables(self.bm25), tok.normalize, q.rules, q.min_df, tok.lexicon)
        return self._rewriter

    def understand(self, text: str) -> Rewrite:
        """What the engine searches for ``text`` (``query.rewrite`` off: the text itself)."""
        if not self.cfg.query.rewrite or not searchable(text):
            return Rewrite(text)
        return self.rewriter().rewrite(text)

    # -- retrieval -----------------------------------------------------------------------------------------------
    def _encode(self, stage: str, texts: list[str]) -> np.ndarray:
        return self.dense_stage(stage)[0].encode_queries(texts)

    def retrieve(self, text: str, k: int = 10, stage: str = "bm25", mask: np.ndarray | None = None) -> SearchResult:
        """Rows and scores of the top-k products of one stage (no strings decoded); deleted products never.
        A query with nothing to search for (see :mod:`engine.query_input`) gets no hits from every stage."""
        text, _ = clean_text(text, self.cfg.search.max_query_chars)
        if not searchable(text):
            return _EMPTY
        return self.retrieve_understood(self.understand(text).text, k, stage, self.with_live(mask))

    def retrieve_understood(self, text: str, k: int, stage: str, mask: np.ndarray | None) -> SearchResult:
        """One stage's top-k for an already understood text; ``mask`` already excludes deleted products."""
        if stage == "bm25" or stage in DENSE_STAGES:
            return retrieve_batch(self.first_stages, self._encode, [text], k, stage, mask)[0]
        if stage == "hybrid":
            return self.fused(text, k, ("bm25", "dense"), mask)
        if stage == "rerank":
            return self._reranked([text], k, mask)[0]
        raise ValueError(f"unknown stage {stage!r}; this engine has {list(STAGES)}")

    def fused(self, text: str, k: int, stages: Sequence[str], mask: np.ndarray | None) -> SearchResult:
        """Each stage's candidates (``search.candidates`` deep), merged as ``search.fusion`` says
        (:func:`engine.hybrid.hybrid`)."""
        vectors = lambda stage: self.dense_stage(stage)[1].vectors  # noqa: E731
        return hybrid(self.first_stages, self._encode, vectors, text, k, stages, mask, self.cfg.search, self.bm25)

    def retrieve_many(self, texts: Sequence[str], k: int, stage: str) -> list[SearchResult]:
        """Batch retrieval for evaluation (queries encoded in batches for dense stages, pairs for rerank)."""
        if stage in DENSE_STAGES:
            return retrieve_batch(
                self.first_stages, self._encode, [self.understand(t).text for t in texts], k, stage, self.live
            )
        if stage == "rerank":
            return self._reranked([self.understand(t).text for t in texts], k, self.live)
        return [self.retrieve(t, k=k, stage=stage) for t in texts]

    def candidates_many(
        self, texts: Sequence[str], mask: np.ndarray | None = None, stages: Sequence[str] = RERANK_FIRST_STAGES
    ) -> list[SearchResult]:
        """What the cross-encoder reranks: per query, the union of the stages' top ``rerank.depth``,
        in reciprocal-rank-fusion order with its scores (dense queries encoded in one batch)."""
        return [fused for fused, _, _ in self.stage_candidates(texts, mask, stages)]

    def stage_candidates(
        self,
        texts: Sequence[str],
        mask: np.ndarray | None,
        stages: Sequence[str] = RERANK_FIRST_STAGES,
        deep: int = 0,
        timings: dict | None = None,
    ) -> list[tuple[SearchResult, list[SearchResult], list[SearchResult]]]:
        """Per query: the fused union of the stages' top ``rerank.depth``, those top lists, and each stage's
        full list (``deep`` long where a caller needs more of it)."""
        return stage_candidates(
            self.first_stages, self._encode, texts, self.cfg.rerank.depth, mask, stages, deep, timings
        )

    # -- rerank and final ranking --------------------------------------------------------------------------------
    def candidate_sets(
        self, texts: Sequence[str], mask: np.ndarray | None = None, deep: int = 0, timings: dict | None = None
    ) -> list[Candidates]:
        """Per query: the reranked candidates (union of the bm25 and dense top ``rerank.depth``) with their
        stage scores and ranks and cross-encoder scores (all pairs of all queries in one batch run).
        Nothing personal: the same for every user (cacheable per query and filter)."""
        both = self.stage_candidates(texts, mask, deep=max(deep, self.cfg.rerank.lookup_depth), timings=timings)
        cands = score_candidate_sets(texts, both, self.bm25, self.score_pairs, self.cfg.rerank, timings)
        if self.cfg.rerank.base_cosine:
            encoder, index = self.dense_stage(DENSE_BASE)
            add_base_cosine(cands, encoder.encode_queries, index.vectors, timings)
        return cands

    def cached_candidate_sets(
        self, texts: list[str], mask: np.ndarray | None, key, deep: int, timings: dict
    ) -> list[Candidates]:
        """:meth:`candidate_sets` through the cache of recent queries (``search.cache_size``)."""
        return self._cache.get_many(
            texts, key, deep, self._live[0], lambda todo: self.candidate_sets(todo, mask, deep, timings), timings
        )

    @property
    def cache_hits(self) -> int:
        return self._cache.hits

    @property
    def cache_misses(self) -> int:
        return self._cache.misses

    def features(
        self, cand: Candidates, profile=None, now: float | None = None, variant: str | None = None
    ) -> np.ndarray:
        """The ranker's feature rows (:data:`engine.features.FEATURES`) of one query's candidates for a user
        (``profile`` None: the cold-user values)."""
        return candidate_features(
            cand, self.user_events(), self.facets(), self.cfg.personal, profile, now, self.models.query_clicks(variant)
        )

    def rank_candidates(
        self,
        cand: Candidates,
        k: int,
        profile=None,
        personalize: float = 1.0,
        explain: bool = False,
        now: float | None = None,
        variant: str | None = None,
    ) -> tuple[SearchResult, list[dict] | None]:
        """The final order of one query's candidates (learned ranker, or the z-score mix without one), the
        rest of the hybrid list below them down to ``k``, and per hit an explanation when asked."""
        return rank_candidates(
            cand,
            k,
            self.cfg.rerank,
            self.ranker(variant),
            lambda c, p: self.features(c, p, now, variant),
            profile,
            personalize,
            explain,
            self.models.teacher_scores if self.cfg.rerank.teacher else None,
            lambda c, p: taste_evidence(c, p, self.facets(), self.cfg.personal, now),
        )

    def _reranked(self, texts: Sequence[str], k: int, mask: np.ndarray | None) -> list[SearchResult]:
        """The final order over each query's candidates (non-personal); below them, down to ``k``, the rest of
        the hybrid list."""
        return [self.rank_candidates(c, k)[0] for c in self.candidate_sets(texts, mask, self.tail_depth(k))]

    def tail_depth(self, k: int) -> int:
        """How deep the stage lists must go for a ``k``-long answer: the hybrid tail below the reranked
        candidates needs ``search.candidates`` (or k) per stage when k exceeds ``rerank.depth``."""
        return max(k, self.cfg.search.candidates) if k > self.cfg.rerank.depth else 0

    # -- answers -------------------------------------------------------------------------------------------------
    def versions(self) -> dict[str, str]:
        """What answers a query: the index builds, the models (name and fingerprint), the engine's version.
        Computed once per set of loaded parts (a version's parts never change; lazy loads add to them)."""
        loaded = self.models.loaded()
        cached = self._versions
        if cached is None or cached[0] != loaded:
            v = {
                "config": self.cfg.name,
                "engine_version": str(self.number),
                "bm25": str(self.bm25.manifest.get("build_id", "")),
            }
            v.update(self.models.describe())
            v.update(self.first_stages.describe())
            cached = self._versions = (loaded, v)
        return cached[1]

    def query(
        self,
        text: str,
        k: int = 10,
        offset: int = 0,
        filters: dict | None = None,
        mask: np.ndarray | None = None,
        user_id: str | None = None,
        personalize: float = 1.0,
        explain: bool = False,
        variant: str | None = None,
    ) -> QueryResult:
        """See :meth:`engine.search.SearchEngine.query`."""
        return self.query_batch(
            [text], k, offset, filters, mask, None if user_id is None else [user_id], personalize, explain, variant
        )[0]

    def query_batch(
        self,
        texts: Sequence[str],
        k: int = 10,
        offset: int = 0,
        filters: dict | None = None,
        mask: np.ndarray | None = None,
        user_ids: Sequence[str | None] | None = None,
        personalize: float = 1.0,
        explain: bool = False,
        variant: str | None = None,
    ) -> list[QueryResult]:
        """See :meth:`engine.search.SearchEngine.query_batch`."""
        return QueryRun(self, texts, k, offset, filters, mask, user_ids, personalize, variant).answer(explain)

    def hits(self, res: SearchResult, notes: list[dict] | None = None, first_rank: int = 1) -> list[Hit]:
        p, lifted, x = self.products, res.lifted, res.relevance
        out = []
        for i, (r, s) in enumerate(zip(res.rows, res.scores)):
            r = int(r)
            up = bool(lifted[i]) if lifted is not None else False
            kw = {"personalized": up, "relevance": float(x[i]) if x is not None and np.isfinite(x[i]) else None}
            out.append(
                Hit(p.ids[r], p.titles[r], float(s), first_rank + i, notes[i] if notes else None, **kw, **p.columns(r))
            )
        return out

    def query_many(self, texts: Sequence[str], k: int = 10) -> list[QueryResult]:
        return self.query_batch(list(texts), k=k)
