"""`SearchEngine`: query → candidates from each configured stage → fusion → rerank → rank (personal) → hits.

Stages: ``bm25`` (keyword), ``dense`` (the config's bi-encoder over a FAISS
index), ``dense-base`` (the zero-shot base model, for evaluation), ``hybrid``
(bm25 and dense merged by reciprocal rank fusion) and ``rerank`` (the union of
the bm25 and dense candidates, ``rerank.depth`` each, ordered by the
fine-tuned cross-encoder, its score combined with the fusion score as
``rerank.weight`` says; below them the rest of the hybrid list).
`query()` fuses the configured stages and reranks when the config names a
cross-encoder (``rerank.model``); with a learned ranker (``rerank.ranker``)
the final order comes from it, over the features of :mod:`engine.features`
including the user's personal features (:mod:`engine.events`,
:mod:`engine.profiles`, :mod:`engine.ranker`).

Concurrency and change: a :class:`SearchEngine` answers from one
:class:`IndexVersion` (the indexes opened from their resolved build folders,
the models, the deleted-products mask).  Each call takes the current version
once and finishes on it; :meth:`SearchEngine.reload` opens a rebuilt index or
changed models beside the running ones and swaps the version in one
assignment, so queries in flight finish on the old one and none sees half of
each.  Models load under a lock; tokenizers are used by one thread at a time.
A product deleted by any process (``deleted.txt``) is masked from the next
query on: every query checks the file's signature (one ``stat``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.features import FEATURES, PERSONAL, Candidates, ctr_popularity, feature_matrix, personal_features
from engine.fusion import reciprocal_rank_fusion
from engine.understanding import QueryRewriter, Rewrite
from engine.query_input import NOTHING_TO_SEARCH, check_filters, check_int, check_personalize, clean_text, searchable
from engine.rerank import CrossEncoder, combine
from engine.types import (
    DENSE_STAGES,
    RERANK_FIRST_STAGES,
    STAGES,
    Hit,
    QueryError,
    QueryResult,  # noqa: F401
    SearchResult,
)
from indexer.bm25 import BM25Index
from indexer.query_tables import query_tables
from indexer.config import Config, ConfigError, load_config
from indexer.encoder import ModelMissingError, model_fingerprint
from indexer.store import IndexLoadError, stage_folder, try_recover, version_root

_EMPTY = SearchResult(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


class ModelMismatchError(ModelMissingError):
    """A model was trained on another model's outputs than the config's (e.g. the ranker on another
    cross-encoder's scores)."""


class IndexVersion:
    """One version of everything a query reads: the indexes (from their resolved build folders), the models,
    the deleted mask.  :class:`SearchEngine` answers from one and swaps to a new one on reload."""

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
        self._dense: dict[str, tuple] = {}  # stage -> (encoder, DenseIndex)
        self._cross_encoder: CrossEncoder | None = None
        self._scorer = None  # the cross-encoder, or a micro-batcher in front of it (enable_batching)
        self._ranker = None
        self._events = None
        self._facets = None
        self._rewriter: QueryRewriter | None = None
        self._milvus = None  # search.backend milvus: the first stages' collection
        self._previous = previous  # models are taken over from it where unchanged (then dropped)
        self._lock = threading.RLock()  # lazy loads
        self._live: tuple = (None, None)  # (signature of deleted.txt, mask)
        self._cache: OrderedDict = OrderedDict()  # (text, filters, depth, deleted) -> Candidates
        self._cache_lock = threading.Lock()
        self.cache_hits = self.cache_misses = 0
        self._versions: tuple | None = None  # (loaded parts, versions()), see versions()
        self.reload_deleted()
        if cfg.search.backend == "milvus":
            self.milvus()
        if load_models:
            for stage in cfg.search.stages:
                if stage in DENSE_STAGES:
                    self.dense_stage(stage)
            if cfg.rerank.model:
                self.cross_encoder()
            if cfg.rerank.ranker:
                self.ranker()
        self._previous = None

    def dense_stage(self, stage: str):
        """The encoder and FAISS index of a dense stage, loaded once."""
        if stage in self._dense:
            return self._dense[stage]
        with self._lock:
            return self._load_dense(stage)

    def _load_dense(self, stage: str):
        if stage not in self._dense:
            from indexer.dense import DenseIndex, stage_index_dir

            folder = stage_index_dir(self.cfg, stage)
            if folder.name != stage:  # dense-base with the same model as dense: one encoder, one index
                self._dense[stage] = self.dense_stage(folder.name)
                return self._dense[stage]
            d = self.cfg.dense
            folder = stage_folder(self.cfg.index_dir, stage, self.root)  # this version's build, opened once
            old = self._previous._dense.get(stage) if self._previous is not None else None
            same_encoder = old is not None and old[0].fingerprint == _encoder_fingerprint(self.cfg, stage)
            if same_encoder and old[1].manifest.get("build_id") == _build_id(folder):
                self._dense[stage] = old  # same index build, same encoder
                return old
            encoder = old[0] if same_encoder else query_encoder(self.cfg, stage)
            index = DenseIndex.load(
                folder, encoder.fingerprint, verify=self.verify, nprobe=d.nprobe, ef_search=d.ef_search
            )
            if index.manifest.get("catalog_sha256") != self.bm25.manifest.get("catalog_sha256") or index.n != len(
                self.products
            ):
                raise IndexLoadError(
                    f"{self.cfg.index_dir}: the {stage} index ({index.n} products) and the bm25 "
                    f"index ({len(self.products)}) do not hold the same catalog; rebuild both with "
                    "`make index`"
                )
            self._dense[stage] = (encoder, index)
        return self._dense[stage]

    def milvus(self):
        """The Milvus collection the bm25 and dense stages search (``search.backend: milvus``), opened once and
        checked against this version's local builds."""
        if self._milvus is None:
            with self._lock:
                if self._milvus is None:
                    from indexer.backends.milvus import MilvusStages

                    dense_build = _build_id(stage_folder(self.cfg.index_dir, "dense", self.root))  # None: none
                    self._milvus = MilvusStages.open(self.cfg, self.bm25, dense_build)
        return self._milvus

    def cross_encoder(self) -> CrossEncoder:
        """The config's fine-tuned cross-encoder (``rerank.model``), loaded once."""
        if self._cross_encoder is not None:
            return self._cross_encoder
        with self._lock:
            return self._load_cross_encoder()

    def _load_cross_encoder(self) -> CrossEncoder:
        if self._cross_encoder is None:
            from indexer.encoder import ModelMissingError, resolve_model

            r = self.cfg.rerank
            if not r.model:
                raise ModelMissingError(
                    f"{self.cfg.source or self.cfg.name}: the rerank stage needs rerank.model "
                    "(a cross-encoder `make finetune` trains)"
                )
            path = Path(resolve_model(r.model, self.cfg.root))
            old = self._previous._cross_encoder if self._previous is not None else None
            if (
                old is not None
                and old.path == path
                and _same_runtime(old, r)
                and old.fingerprint() == model_fingerprint(path, old.max_length)
            ):
                self._cross_encoder, self._scorer = old, self._previous._scorer
                return old
            if r.runtime == "onnx":
                from engine.onnx_models import OnnxCrossEncoder
                from engine.rerank import trained_max_length

                self._cross_encoder = OnnxCrossEncoder(
                    path, r.max_length or trained_max_length(path), r.batch_size, r.quantize
                )
            else:
                self._cross_encoder = CrossEncoder.load(
                    path, max_length=r.max_length, batch_size=r.batch_size, device=r.device
                )
            self._scorer = self._cross_encoder
        return self._cross_encoder

    def enable_batching(self, window_ms: float, max_pairs: int) -> None:
        """Score the cross-encoder pairs of concurrent queries together (:class:`engine.batching.MicroBatcher`)."""
        from engine.batching import MicroBatcher

        with self._lock:
            ce = self.cross_encoder()
            if not isinstance(self._scorer, MicroBatcher):
                self._scorer = MicroBatcher(ce, window_ms, max_pairs)

    def score_pairs(self, queries: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        """Cross-encoder scores of (query, title) pairs (through the micro-batcher when it is on)."""
        self.cross_encoder()
        return self._scorer.predict(queries, titles)

    def ranker(self):
        """The learned final ranker (``rerank.ranker``), loaded once; None when the config names none."""
        if self._ranker is None and self.cfg.rerank.ranker:
            with self._lock:
                if self._ranker is None:
                    from engine.ranker import Ranker

                    path = Path(self.cfg.rerank.ranker)
                    path = path if path.is_absolute() else self.cfg.root / path
                    old = self._previous._ranker if self._previous is not None else None
                    ranker = (
                        old if old is not None and old.signature == Ranker.file_signature(path) else Ranker.load(path)
                    )
                    trained_on = ranker.card.get("cross_encoder", {}).get("fingerprint")
                    ce = self.cross_encoder()
                    if trained_on and trained_on != ce.fingerprint():
                        raise ModelMismatchError(
                            f"ranker {path} was trained on the scores of cross-encoder "
                            f"{ranker.card['cross_encoder'].get('path')}, not on rerank.model {self.cfg.rerank.model}; "
                            "retrain it with `make finetune` (python -m finetune --stages ranker)"
                        )
                    self._ranker = ranker
        return self._ranker

    def facets(self):
        """Per product row: vector (from the dense index), category, brand, k-means group, price band."""
        if self._facets is None:
            with self._lock:
                if self._facets is None:
                    from engine.profiles import ProductFacets

                    dense = (
                        self.dense_stage("dense")[1]
                        if "dense" in self.cfg.search.stages or self.cfg.rerank.model
                        else None
                    )
                    self._facets = ProductFacets.from_tables(self.products, dense, self.cfg.personal.price_bands)
        return self._facets

    def user_events(self):
        """The event store with profiles (``personal``), opened at first use."""
        if self._events is None:
            with self._lock:
                if self._events is None:
                    from engine.events import UserEvents

                    self._events = UserEvents.open(self.cfg, self.facets(), self.products)
        return self._events

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
        """Re-read the deleted products (``<index_dir>/deleted.txt``) when the file changed; they are masked in
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

    def _with_live(self, mask: np.ndarray | None) -> np.ndarray | None:
        live = self.live
        if live is None:
            return mask
        return live if mask is None else (live & np.asarray(mask, dtype=bool))

    def retrieve(self, text: str, k: int = 10, stage: str = "bm25", mask: np.ndarray | None = None) -> SearchResult:
        """Rows and scores of the top-k products of one stage (no strings decoded); deleted products never.
        A query with nothing to search for (see :mod:`engine.query_input`) gets no hits from every stage."""
        text, _ = clean_text(text, self.cfg.search.max_query_chars)
        if not searchable(text):
            return _EMPTY
        return self._retrieve(self.understand(text).text, k, stage, self._with_live(mask))

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

    def _retrieve(self, text: str, k: int, stage: str, mask: np.ndarray | None) -> SearchResult:
        """One stage's top-k; ``mask`` already excludes deleted products."""
        if stage == "bm25":
            if self._on_milvus(stage):
                return self.milvus().bm25_search(text, k, mask)
            return self.bm25.search(text, k=k, mask=mask)
        if stage in DENSE_STAGES:
            return self._dense_search(stage, self.dense_stage(stage)[0].encode_queries([text]), k, mask)[0]
        if stage == "hybrid":
            return self._fused(text, k, ("bm25", "dense"), mask)
        if stage == "rerank":
            return self._reranked([text], k, mask)[0]
        raise ValueError(f"unknown stage {stage!r}; this engine has {list(STAGES)}")

    def _on_milvus(self, stage: str) -> bool:
        """Whether Milvus answers this stage: bm25, and dense when the collection holds its vectors (the
        zero-shot ``dense-base`` comparison stage stays local)."""
        return self.cfg.search.backend == "milvus" and stage in ("bm25", "dense")

    def _dense_search(self, stage: str, vecs: np.ndarray, k: int, mask: np.ndarray | None) -> list[SearchResult]:
        if self._on_milvus(stage):
            return self.milvus().dense_search(vecs, k, mask)
        return self.dense_stage(stage)[1].search(vecs, k=k, mask=mask)

    def _fused(self, text: str, k: int, stages: Sequence[str], mask: np.ndarray | None) -> SearchResult:
        """Each stage's candidates (``search.candidates`` deep), merged by reciprocal rank fusion."""
        depth = max(k, self.cfg.search.candidates)
        return reciprocal_rank_fusion([self._retrieve(text, depth, s, mask) for s in stages], k)

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
        depth = self.cfg.rerank.depth
        per_stage = [self._retrieve_batch(texts, max(depth, deep), s, mask, timings) for s in stages]
        out = []
        for lists in zip(*per_stage):
            top = [SearchResult(r.rows[:depth], r.scores[:depth]) for r in lists]
            out.append((reciprocal_rank_fusion(top, len(stages) * depth), top, list(lists)))
        return out

    def _retrieve_batch(
        self, texts: Sequence[str], k: int, stage: str, mask: np.ndarray | None, timings: dict | None = None
    ) -> list[SearchResult]:
        t0 = time.perf_counter()
        if stage in DENSE_STAGES:
            encoder, _ = self.dense_stage(stage)
            vecs = encoder.encode_queries(list(texts))
            t1 = time.perf_counter()
            out = self._dense_search(stage, vecs, k, mask)
            if timings is not None:
                timings[f"{stage}_encode"] = (t1 - t0) * 1000
                timings[f"{stage}_search"] = (time.perf_counter() - t1) * 1000
            return out
        out = [self._retrieve(t, k, stage, mask) for t in texts]
        if timings is not None:
            timings[stage] = (time.perf_counter() - t0) * 1000
        return out

    def candidate_sets(
        self, texts: Sequence[str], mask: np.ndarray | None = None, deep: int = 0, timings: dict | None = None
    ) -> list[Candidates]:
        """Per query: the reranked candidates (union of the bm25 and dense top ``rerank.depth``) with their
        stage scores and ranks and cross-encoder scores (all pairs of all queries in one batch run).
        Nothing personal: the same for every user (cacheable per query and filter)."""
        r = self.cfg.rerank
        both = self.stage_candidates(texts, mask, deep=deep, timings=timings)
        titles = self.products.titles
        pair_q = [t for t, (c, _, _) in zip(texts, both) for _ in range(len(c.rows))]
        pair_t = titles.take(row for c, _, _ in both for row in c.rows)
        t0 = time.perf_counter()
        ce = self.score_pairs(pair_q, pair_t)
        if timings is not None:
            timings["cross_encoder"] = (time.perf_counter() - t0) * 1000
            timings["pairs"] = len(pair_q)
        out, start = [], 0
        for fused, top, lists in both:
            cand = Candidates.from_stages(fused, top, lists, RERANK_FIRST_STAGES, r.first_stage, r.depth)
            cand.ce = ce[start : start + len(cand.rows)].astype(np.float64)
            start += len(cand.rows)
            out.append(cand)
        return out

    def features(self, cand: Candidates, profile=None, now: float | None = None) -> np.ndarray:
        """The ranker's feature rows (:data:`engine.features.FEATURES`) of one query's candidates for a user
        (``profile`` None: the cold-user values)."""
        pc = self.cfg.personal
        ev = self.user_events()
        stats = ev.stats(pc.stats_refresh_seconds)
        ctr, pop = ctr_popularity(stats.counts[cand.rows], stats.totals, pc.ctr_prior)
        personal = None
        if profile is not None:
            now = time.time() if now is None else now
            personal = personal_features(
                cand.rows, profile, self.facets(), now, pc.half_life_days * 86400.0, ev.bought_rows(profile)
            )
        return feature_matrix(cand, ctr, pop, personal)

    def rank_candidates(
        self,
        cand: Candidates,
        k: int,
        profile=None,
        personalize: float = 1.0,
        explain: bool = False,
        now: float | None = None,
    ) -> tuple[SearchResult, list[dict] | None]:
        """The final order of one query's candidates (learned ranker, or the z-score mix without one), the
        rest of the hybrid list below them down to ``k``, and per hit an explanation when asked."""
        r = self.cfg.rerank
        ranker = self.ranker()
        n = len(cand.rows)
        X = base = None
        if ranker is not None:
            X = self.features(cand, profile if ranker.uses_personal else None, now)
            score, base = ranker.score(X, personalize, warm=profile is not None)
            # a tree ensemble scores in steps: candidates it cannot tell apart keep the z-score mix's order
            order = np.lexsort((-combine(cand.ce, cand.first, r.weight), -score))
        else:
            score = combine(cand.ce, cand.first, r.weight)
            order = np.argsort(-score, kind="stable")
        rows, scores = cand.rows[order], score[order].astype(np.float32)
        if k > n:  # the hybrid ranking continues below the reranked candidates
            tail = reciprocal_rank_fusion(cand.lists, k)
            tail_rows = tail.rows[~np.isin(tail.rows, rows)][: k - n]
            floor = (scores.min() if n else 0.0) - 1.0
            rows = np.concatenate([rows, tail_rows])
            scores = np.concatenate([scores, floor - np.arange(len(tail_rows), dtype=np.float32)])
        res = SearchResult(rows[:k], scores[:k])
        if not explain:
            return res, None
        if X is None:
            X = self.features(cand, None, now)
        notes = []
        for i in order[:k]:
            stages = {
                s: {"score": float(cand.stage_scores[s][i]), "rank": int(cand.stage_ranks[s][i])}
                for s in cand.stage_scores
            }
            notes.append(
                {
                    "stages": stages,
                    "rrf": float(cand.rrf[i]),
                    "cross_encoder": float(cand.ce[i]),
                    "first_stage": float(cand.first[i]),
                    "ctr": float(X[i, FEATURES.index("ctr")]),
                    "popularity": float(X[i, FEATURES.index("popularity")]),
                    "personal": {f: float(X[i, FEATURES.index(f)]) for f in PERSONAL},
                    "ranker": "lightgbm" if ranker is not None else f"z-score mix (weight {r.weight})",
                    "non_personal_score": float(base[i]) if base is not None else float(score[i]),
                    "final_score": float(score[i]),
                }
            )
        notes += [
            {"stages": {}, "note": "below the reranked candidates: hybrid order"}
            for _ in range(len(res.rows) - len(notes))
        ]
        return res, notes

    def _reranked(self, texts: Sequence[str], k: int, mask: np.ndarray | None) -> list[SearchResult]:
        """The final order over each query's candidates (non-personal); below them, down to ``k``, the rest of
        the hybrid list."""
        return [self.rank_candidates(c, k)[0] for c in self.candidate_sets(texts, mask, self._tail_depth(k))]

    def _tail_depth(self, k: int) -> int:
        """How deep the stage lists must go for a ``k``-long answer: the hybrid tail below the reranked
        candidates needs ``search.candidates`` (or k) per stage when k exceeds ``rerank.depth``."""
        return max(k, self.cfg.search.candidates) if k > self.cfg.rerank.depth else 0

    def retrieve_many(self, texts: Sequence[str], k: int, stage: str) -> list[SearchResult]:
        """Batch retrieval for evaluation (queries encoded in batches for dense stages, pairs for rerank)."""
        if stage in DENSE_STAGES:
            return self._retrieve_batch([self.understand(t).text for t in texts], k, stage, self.live)
        if stage == "rerank":
            return self._reranked([self.understand(t).text for t in texts], k, self.live)
        return [self.retrieve(t, k=k, stage=stage) for t in texts]

    def _cached_candidate_sets(
        self, texts: list[str], mask: np.ndarray | None, key, deep: int, timings: dict
    ) -> list[Candidates]:
        """:meth:`candidate_sets` through a cache of recent queries (``search.cache_size``): the candidates and
        their cross-encoder scores are the same for every user, so one entry serves every user's ranking.
        ``key`` is None when the mask cannot be named (an explicit mask): no caching then."""
        size = self.cfg.search.cache_size
        if not size or key is None:
            return self.candidate_sets(texts, mask, deep, timings)
        sig = self._live[0]
        keys = [(t, key, deep, sig) for t in texts]
        with self._cache_lock:
            found = {kk: self._cache[kk] for kk in keys if kk in self._cache}
            for kk in found:
                self._cache.move_to_end(kk)
        missing = [t for t, kk in zip(texts, keys) if kk not in found]
        self.cache_hits += len(texts) - len(missing)
        self.cache_misses += len(missing)
        timings["cache_hits"] = len(texts) - len(missing)
        if missing:
            for t, c in zip(missing, self.candidate_sets(missing, mask, deep, timings)):
                found[(t, key, deep, sig)] = c
            with self._cache_lock:
                for kk in keys:
                    self._cache[kk] = found[kk]
                while len(self._cache) > size:
                    self._cache.popitem(last=False)
        return [found[kk] for kk in keys]

    def versions(self) -> dict[str, str]:
        """What answers a query: the index builds, the models (name and fingerprint), the engine's version.
        Computed once per set of loaded parts (a version's parts never change; lazy loads add to them)."""
        loaded = (tuple(self._dense), self._cross_encoder is not None, self._ranker is not None)
        cached = self._versions
        if cached is None or cached[0] != loaded:
            cached = self._versions = (loaded, self._describe_versions())
        return cached[1]

    def _describe_versions(self) -> dict[str, str]:
        v = {
            "config": self.cfg.name,
            "engine_version": str(self.number),
            "bm25": str(self.bm25.manifest.get("build_id", "")),
        }
        for stage, (enc, index) in sorted(self._dense.items()):
            v[stage] = str(index.manifest.get("build_id", ""))
            v[f"{stage}_encoder"] = f"{Path(str(enc.describe()['model'])).name}@{enc.fingerprint}"
        if self._cross_encoder is not None:
            ce = self._cross_encoder
            v["cross_encoder"] = f"{Path(ce.path).name}@{ce.fingerprint()} ({ce.runtime})"
        if self._ranker is not None:
            v["ranker"] = f"{self._ranker.path.name}@{self._ranker.signature[2]}"
        if self._milvus is not None:  # which collection answered the first stages
            v["milvus"] = self._milvus.collection
        return v

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
    ) -> QueryResult:
        """See :meth:`SearchEngine.query`."""
        return self.query_batch(
            [text], k, offset, filters, mask, None if user_id is None else [user_id], personalize, explain
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
    ) -> list[QueryResult]:
        """See :meth:`SearchEngine.query_batch`."""
        t_start = time.perf_counter()
        sc = self.cfg.search
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise QueryError("q", "query_batch takes a list of query strings")
        k = check_int(k, "k", 1, sc.max_k)
        offset = check_int(offset, "offset", 0, sc.max_k - k)
        personalize = check_personalize(personalize)
        user_ids = [None] * len(texts) if user_ids is None else list(user_ids)
        if len(user_ids) != len(texts):
            raise QueryError("user", f"{len(user_ids)} user ids for {len(texts)} queries")
        for u in user_ids:
            if u is not None and (not isinstance(u, str) or not u.strip()):
                raise QueryError("user", f"must be a non-empty string, got {u!r}")
        cleaned = [clean_text(t, sc.max_query_chars) for t in texts]
        t_u = time.perf_counter()
        rewrites = [self.understand(t) for t, _ in cleaned]
        t_understood = (time.perf_counter() - t_u) * 1000
        filters = check_filters(filters)
        key = (
            None
            if mask is not None
            else tuple(sorted((f, tuple(v) if isinstance(v, list) else v) for f, v in (filters or {}).items()))
        )
        fmask = self.products.mask(**filters) if filters else None  # checked above
        if fmask is not None:
            mask = fmask if mask is None else (fmask & np.asarray(mask, dtype=bool))
        mask = self._with_live(mask)
        if fmask is not None and key is not None and self.cfg.search.backend == "milvus":
            from indexer.backends.milvus import ExprMask, filters_expr

            mask = ExprMask.wrap(mask, filters_expr(filters))  # Milvus filters by expression, not row lists
        depth = k + offset
        timings: dict = {"validate": (time.perf_counter() - t_start) * 1000}
        todo = [i for i, (t, _) in enumerate(cleaned) if searchable(t)]
        ranked: dict[int, tuple[SearchResult, list | None]] = {}
        with np.errstate(all="ignore"):  # a filter that leaves nothing: empty lists, no warnings
            if self.cfg.rerank.model and todo:
                cands = self._cached_candidate_sets(
                    [rewrites[i].text for i in todo], mask, key, self._tail_depth(depth), timings
                )
                t0 = time.perf_counter()
                ranker = self.ranker()
                personal = ranker is not None and ranker.uses_personal and personalize > 0
                for i, cand in zip(todo, cands):
                    profile = self.profile(user_ids[i]) if personal and user_ids[i] is not None else None
                    ranked[i] = self.rank_candidates(cand, depth, profile, personalize, explain)
                timings["rank"] = (time.perf_counter() - t0) * 1000
            else:
                stages = self.cfg.search.stages
                for i in todo:
                    t = rewrites[i].text
                    res = (
                        self._retrieve(t, depth, stages[0], mask)
                        if len(stages) == 1
                        else self._fused(t, depth, stages, mask)
                    )
                    ranked[i] = (res, None)
        timings["understand"] = t_understood
        timings["total"] = (time.perf_counter() - t_start) * 1000
        timings = {kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in timings.items()}
        versions = self.versions()
        out = []
        for i, (text, truncated) in enumerate(cleaned):
            if i not in ranked:
                out.append(
                    QueryResult(
                        [], text, timings, versions, reason=NOTHING_TO_SEARCH, truncated=truncated, k=k, offset=offset
                    )
                )
                continue
            res, notes = ranked[i]
            hits = self.hits(
                SearchResult(res.rows[offset:depth], res.scores[offset:depth]),
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
                    searched=rewrites[i].text,
                    rewrites=rewrites[i].steps,
                )
            )
        return out

    def hits(self, res: SearchResult, notes: list[dict] | None = None, first_rank: int = 1) -> list[Hit]:
        ids, titles = self.products.ids, self.products.titles
        return [
            Hit(ids[int(r)], titles[int(r)], float(s), first_rank + i, notes[i] if notes else None)
            for i, (r, s) in enumerate(zip(res.rows, res.scores))
        ]

    def query_many(self, texts: Sequence[str], k: int = 10) -> list[QueryResult]:
        return self.query_batch(list(texts), k=k)


# -- opening a version ----------------------------------------------------------------------------------------
def open_bm25(cfg: Config, verify: bool = True, tokenizer=None) -> tuple[BM25Index, Path]:
    """The BM25 index (and product table) of the serving version, and that version's folder
    (``<index_dir>/current`` resolved once: the other stages are opened from the same version)."""
    link = cfg.index_dir / "bm25"
    root = version_root(cfg.index_dir)
    try:
        bm25 = BM25Index.load(
            stage_folder(cfg.index_dir, "bm25", root),
            cfg.text,
            config_hash=cfg.index_fingerprint(),
            verify=verify,
            tokenizer=tokenizer,
        )
        return bm25, root
    except IndexLoadError:
        catalog = cfg.catalog.path
        if catalog is not None and not Path(catalog).is_file():
            raise ConfigError(
                f"{cfg.source or cfg.name}: catalog.path {catalog} not found (the index at {link} "
                "was built from another catalog or settings); fix the path, or rebuild with "
                "`make index`"
            ) from None
        raise


def _build_id(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("build_id")
    except (OSError, ValueError):
        return None


def _encoder_fingerprint(cfg: Config, stage: str) -> str:
    from indexer.dense import stage_model

    return model_fingerprint(Path(stage_model(cfg, stage)), cfg.dense.max_length)


def _same_runtime(ce, r) -> bool:
    """Whether a loaded cross-encoder runs as the config's ``rerank`` section says."""
    wanted = "torch" if r.runtime == "torch" else f"onnx-{r.quantize}"
    return ce.runtime == wanted and (r.max_length is None or r.max_length == ce.max_length)


def query_encoder(cfg: Config, stage: str):
    """The encoder a dense stage embeds queries with: torch (the index job's encoder) or, for the ``dense``
    stage with ``dense.query_runtime: onnx``, its ONNX export (same fingerprint: the same model)."""
    from indexer.dense import dense_encoder, stage_model

    d = cfg.dense
    if stage == "dense" and d.query_runtime == "onnx":
        from engine.onnx_models import OnnxQueryEncoder

        path = Path(stage_model(cfg, stage))
        return OnnxQueryEncoder(path, d.max_length, model_fingerprint(path, d.max_length), d.query_quantize)
    return dense_encoder(cfg, stage)


# -- the engine: one current version, swapped on reload -------------------------------------------------------
class SearchEngine:
    """Answers queries from the indexes `make index` built for a config (thread-safe; see the module doc).

    Everything an :class:`IndexVersion` offers is reachable on the engine (``engine.bm25``,
    ``engine.candidate_sets(...)``, ...) and answered by the current version."""

    _OWN = ("_version", "_reload_lock", "_batching", "load_models", "_passage_encoders")

    def __init__(
        self, cfg: Config, bm25: BM25Index, verify: bool = True, load_models: bool = True, root: Path | None = None
    ):
        object.__setattr__(self, "_version", IndexVersion(cfg, bm25, verify, load_models, root=root))
        object.__setattr__(self, "_reload_lock", threading.Lock())
        object.__setattr__(self, "_batching", None)
        object.__setattr__(self, "load_models", load_models)
        object.__setattr__(self, "_passage_encoders", {})  # stage -> the encoder added products are embedded with

    @classmethod
    def from_config(
        cls, path: str | Path | Config, verify: bool = True, load_models: bool = True, **overrides
    ) -> "SearchEngine":
        """Load the engine for a config file (or an already loaded :class:`Config`).

        Fails with a clear error if an index is missing, corrupt, from another
        format version, built with other settings than the config's, or (dense)
        built with another encoder.  ``load_models=False`` defers loading the
        models to their first use (event ingestion needs none).
        """
        cfg = path if isinstance(path, Config) else load_config(path, **overrides)
        try_recover(cfg.index_dir)  # an index left half-updated by a killed process: back to its last version
        bm25, root = open_bm25(cfg, verify)
        return cls(cfg, bm25, verify=verify, load_models=load_models, root=root)

    def __getattr__(self, name):
        return getattr(self._version, name)

    def __setattr__(self, name, value):
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._version, name, value)

    @property
    def version(self) -> IndexVersion:
        """The version answering queries now (take it once to make several calls on one version)."""
        return self._version

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
    ) -> QueryResult:
        """Ranked hits ``offset+1 .. offset+k`` for a query, with per-step timings and the versions that answered.

        ``filters`` restricts results by category, brand or price range;
        ``mask`` (one bool per product row) is the general form.  Both are
        applied inside each stage's retrieval, before its top-k cut.
        ``user_id`` personalizes the order with the learned ranker's personal
        features, scaled by ``personalize`` (0 = off, 1 = full); no user, an
        unknown user or one with no events get exactly the non-personalized
        ranking.  ``explain=True`` gives each hit its stage scores and ranks,
        cross-encoder score, personal features and final score.
        The text is cleaned (:mod:`engine.query_input`); a query with nothing to
        search for gets no hits and a ``reason``.  Bad arguments raise
        :class:`engine.types.QueryError` naming the parameter.
        """
        return self._version.query(text, k, offset, filters, mask, user_id, personalize, explain)

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
    ) -> list[QueryResult]:
        """:meth:`query` for several texts at once: dense queries encoded in one batch and every query's
        cross-encoder pairs scored in one run (``user_ids``: one per text, or None)."""
        return self._version.query_batch(texts, k, offset, filters, mask, user_ids, personalize, explain)

    def enable_batching(self, window_ms: float, max_pairs: int) -> None:
        """Gather the cross-encoder pairs of concurrent queries (the service turns this on); kept across reloads."""
        object.__setattr__(self, "_batching", (window_ms, max_pairs))
        self._version.enable_batching(window_ms, max_pairs)

    def add_products(self, catalog, progress: bool = False) -> dict:
        """Add new products (a validated :class:`core.formats.catalog.Catalog`) to every stage without a rebuild, and
        switch to the version that holds them: searchable when this returns.  The titles are embedded with the
        encoders this engine already holds (loaded once, kept across adds), so adding one product costs encoding
        one title.  Returns :func:`indexer.updates.add_products`'s report with ``versions``."""
        from indexer.updates import add_products

        report = add_products(
            self.cfg, catalog, progress, encoders=self._encoders_for_adding(), tokenizer=self._version.bm25.tokenizer
        )
        report["versions"] = self.reload()["versions"]
        return report

    def _encoders_for_adding(self) -> dict:
        """stage -> passage encoder of every dense stage served: the loaded one where it embeds passages (torch),
        else one loaded at the first add and kept while the stage's model stays the same."""
        from indexer.dense import dense_encoder

        out = {}
        for stage, (enc, _) in list(self._version._dense.items()):
            if hasattr(enc, "encode_passages"):
                out[stage] = enc
                continue
            kept = self._passage_encoders.get(stage)
            if kept is None or kept.fingerprint != enc.fingerprint:
                kept = self._passage_encoders[stage] = dense_encoder(self.cfg, stage)
            out[stage] = kept
        return out

    def reload(self) -> dict:
        """Open the indexes the ``<index_dir>`` links point at now and the config's models, beside the running
        version, and switch to them in one step when anything changed (unchanged models are shared, not
        reloaded).  Queries in flight finish on the version they started on.  On any error the running version
        stays and the error is raised.  Returns ``{"changed": bool, "versions": ...}``."""
        with self._reload_lock:
            old = self._version
            if not self.stale():
                return {"changed": False, "versions": old.versions()}
            bm25, root = open_bm25(old.cfg, old.verify, old.bm25.tokenizer)
            new = IndexVersion(
                old.cfg, bm25, old.verify, self.load_models, previous=old, number=old.number + 1, root=root
            )
            if self._batching:
                new.enable_batching(*self._batching)
            object.__setattr__(self, "_version", new)
            return {"changed": True, "versions": new.versions()}

    def stale(self) -> bool:
        """Whether a rebuilt index was swapped in (or a model changed) since the running version opened."""
        v = self._version
        if _build_id(stage_folder(v.cfg.index_dir, "bm25")) != v.bm25.manifest.get("build_id"):
            return True
        for stage, (enc, index) in list(v._dense.items()):
            from indexer.dense import stage_index_dir

            if _build_id(stage_folder(v.cfg.index_dir, stage_index_dir(v.cfg, stage).name)) != index.manifest.get(
                "build_id"
            ):
                return True
            if enc.fingerprint != _encoder_fingerprint(v.cfg, stage):
                return True
        ce = v._cross_encoder
        if ce is not None and ce.fingerprint() != model_fingerprint(Path(ce.path), ce.max_length):
            return True
        if v._ranker is not None:
            from engine.ranker import Ranker

            if v._ranker.signature != Ranker.file_signature(v._ranker.path):
                return True
        return False

    def delete(self, product_ids: Sequence[str]) -> int:
        """Delete products from every stage at once: no query started after this returns shows them."""
        return self._version.delete(product_ids)
