"""`SearchEngine`: query → candidates from each configured stage → fusion → ranked hits.

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
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.features import FEATURES, PERSONAL, Candidates, ctr_popularity, feature_matrix, personal_features
from engine.fusion import reciprocal_rank_fusion
from engine.rerank import CrossEncoder, combine
from indexer.bm25 import BM25Index, SearchResult
from indexer.config import Config, load_config
from indexer.encoder import ModelMissingError
from indexer.store import IndexLoadError

STAGES = ("bm25", "dense", "dense-base", "hybrid", "rerank")
RERANK_FIRST_STAGES = ("bm25", "dense")
DENSE_STAGES = ("dense", "dense-base")


class ModelMismatchError(ModelMissingError):
    """A model was trained on another model's outputs than the config's (e.g. the ranker on another
    cross-encoder's scores)."""


@dataclass(frozen=True)
class Hit:
    product_id: str
    title: str
    score: float
    rank: int
    explain: dict | None = None  # with query(..., explain=True): stage scores/ranks, cross-encoder, personal


class SearchEngine:
    """Answers queries from the indexes `make index` built for a config."""

    def __init__(self, cfg: Config, bm25: BM25Index, verify: bool = True, load_models: bool = True):
        self.cfg = cfg
        self.bm25 = bm25
        self.products = bm25.products
        self.verify = verify
        self._dense: dict[str, tuple] = {}  # stage -> (encoder, DenseIndex)
        self._cross_encoder: CrossEncoder | None = None
        self._ranker = None
        self._events = None
        self._facets = None
        self._lock = threading.RLock()  # lazy loads
        self.reload_deleted()
        if load_models:
            for stage in cfg.search.stages:
                if stage in DENSE_STAGES:
                    self.dense_stage(stage)
            if cfg.rerank.model:
                self.cross_encoder()
            if cfg.rerank.ranker:
                self.ranker()

    @classmethod
    def from_config(cls, path: str | Path | Config, verify: bool = True, load_models: bool = True,
                    **overrides) -> "SearchEngine":
        """Load the engine for a config file (or an already loaded :class:`Config`).

        Fails with a clear error if an index is missing, corrupt, from another
        format version, built with other settings than the config's, or (dense)
        built with another encoder.  ``load_models=False`` defers loading the
        models to their first use (event ingestion needs none).
        """
        cfg = path if isinstance(path, Config) else load_config(path, **overrides)
        bm25 = BM25Index.load(cfg.index_dir / "bm25", cfg.text, config_hash=cfg.index_fingerprint(), verify=verify)
        return cls(cfg, bm25, verify=verify, load_models=load_models)

    def dense_stage(self, stage: str):
        """The encoder and FAISS index of a dense stage, loaded once."""
        if stage in self._dense:
            return self._dense[stage]
        with self._lock:
            return self._load_dense(stage)

    def _load_dense(self, stage: str):
        if stage not in self._dense:
            from indexer.dense import DenseIndex, dense_encoder, stage_index_dir

            folder = stage_index_dir(self.cfg, stage)
            if folder.name != stage:  # dense-base with the same model as dense: one encoder, one index
                self._dense[stage] = self.dense_stage(folder.name)
                return self._dense[stage]
            d = self.cfg.dense
            encoder = dense_encoder(self.cfg, stage)
            index = DenseIndex.load(folder, encoder.fingerprint, verify=self.verify, nprobe=d.nprobe,
                                    ef_search=d.ef_search)
            if index.manifest.get("catalog_sha256") != self.bm25.manifest.get("catalog_sha256") \
                    or index.n != len(self.products):
                raise IndexLoadError(f"{self.cfg.index_dir}: the {stage} index ({index.n} products) and the bm25 "
                                     f"index ({len(self.products)}) do not hold the same catalog; rebuild both with "
                                     "`make index`")
            self._dense[stage] = (encoder, index)
        return self._dense[stage]

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
                raise ModelMissingError(f"{self.cfg.source or self.cfg.name}: the rerank stage needs rerank.model "
                                        "(a cross-encoder `make finetune` trains)")
            path = resolve_model(r.model, self.cfg.root)
            self._cross_encoder = CrossEncoder.load(path, max_length=r.max_length, batch_size=r.batch_size,
                                                    device=r.device)
        return self._cross_encoder

    def ranker(self):
        """The learned final ranker (``rerank.ranker``), loaded once; None when the config names none."""
        if self._ranker is None and self.cfg.rerank.ranker:
            with self._lock:
                if self._ranker is None:
                    from engine.ranker import Ranker

                    path = Path(self.cfg.rerank.ranker)
                    ranker = Ranker.load(path if path.is_absolute() else self.cfg.root / path)
                    trained_on = ranker.card.get("cross_encoder", {}).get("fingerprint")
                    ce = self.cross_encoder()
                    if trained_on and trained_on != ce.fingerprint():
                        raise ModelMismatchError(
                            f"ranker {path} was trained on the scores of cross-encoder "
                            f"{ranker.card['cross_encoder'].get('path')}, not on rerank.model {self.cfg.rerank.model}; "
                            "retrain it with `make finetune` (python -m finetune --stages ranker)")
                    self._ranker = ranker
        return self._ranker

    def facets(self):
        """Per product row: vector (from the dense index), category, brand, k-means group, price band."""
        if self._facets is None:
            with self._lock:
                if self._facets is None:
                    from engine.profiles import ProductFacets

                    dense = self.dense_stage("dense")[1] if "dense" in self.cfg.search.stages \
                        or self.cfg.rerank.model else None
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
        """Re-read the deleted products (``<index_dir>/deleted.txt``); they are masked in every stage."""
        from indexer.updates import deleted_ids, live_mask

        self.live = live_mask(self.products, deleted_ids(self.cfg))

    def delete(self, product_ids: Sequence[str]) -> int:
        """Delete products from every stage at once (never returned again; purged at the next rebuild)."""
        from indexer.updates import delete_products

        n = delete_products(self.cfg, product_ids)
        self.reload_deleted()
        return n

    def _with_live(self, mask: np.ndarray | None) -> np.ndarray | None:
        if self.live is None:
            return mask
        return self.live if mask is None else (self.live & np.asarray(mask, dtype=bool))

    def filter_mask(self, filters: dict | None) -> np.ndarray | None:
        """Boolean mask from ``{"category": ..., "brand": ..., "price_min": ..., "price_max": ...}``."""
        if not filters:
            return None
        unknown = set(filters) - {"category", "brand", "price_min", "price_max"}
        if unknown:
            raise ValueError(f"unknown filter(s) {sorted(unknown)}; use category, brand, price_min, price_max")
        return self.products.mask(**filters)

    def retrieve(self, text: str, k: int = 10, stage: str = "bm25", mask: np.ndarray | None = None) -> SearchResult:
        """Rows and scores of the top-k products of one stage (no strings decoded); deleted products never."""
        return self._retrieve(text, k, stage, self._with_live(mask))

    def _retrieve(self, text: str, k: int, stage: str, mask: np.ndarray | None) -> SearchResult:
        """One stage's top-k; ``mask`` already excludes deleted products."""
        if stage == "bm25":
            return self.bm25.search(text, k=k, mask=mask)
        if stage in DENSE_STAGES:
            encoder, index = self.dense_stage(stage)
            return index.search(encoder.encode_queries([text]), k=k, mask=mask)[0]
        if stage == "hybrid":
            return self._fused(text, k, ("bm25", "dense"), mask)
        if stage == "rerank":
            return self._reranked([text], k, mask)[0]
        raise ValueError(f"unknown stage {stage!r}; this engine has {list(STAGES)}")

    def _fused(self, text: str, k: int, stages: Sequence[str], mask: np.ndarray | None) -> SearchResult:
        """Each stage's candidates (``search.candidates`` deep), merged by reciprocal rank fusion."""
        depth = max(k, self.cfg.search.candidates)
        return reciprocal_rank_fusion([self._retrieve(text, depth, s, mask) for s in stages], k)

    def candidates_many(self, texts: Sequence[str], mask: np.ndarray | None = None,
                        stages: Sequence[str] = RERANK_FIRST_STAGES) -> list[SearchResult]:
        """What the cross-encoder reranks: per query, the union of the stages' top ``rerank.depth``,
        in reciprocal-rank-fusion order with its scores (dense queries encoded in one batch)."""
        return [fused for fused, _, _ in self.stage_candidates(texts, mask, stages)]

    def stage_candidates(self, texts: Sequence[str], mask: np.ndarray | None,
                    stages: Sequence[str] = RERANK_FIRST_STAGES,
                    deep: int = 0) -> list[tuple[SearchResult, list[SearchResult], list[SearchResult]]]:
        """Per query: the fused union of the stages' top ``rerank.depth``, those top lists, and each stage's
        full list (``deep`` long where a caller needs more of it)."""
        depth = self.cfg.rerank.depth
        per_stage = [self._retrieve_batch(texts, max(depth, deep), s, mask) for s in stages]
        out = []
        for lists in zip(*per_stage):
            top = [SearchResult(r.rows[:depth], r.scores[:depth]) for r in lists]
            out.append((reciprocal_rank_fusion(top, len(stages) * depth), top, list(lists)))
        return out

    def _retrieve_batch(self, texts: Sequence[str], k: int, stage: str, mask: np.ndarray | None) -> list[SearchResult]:
        if stage in DENSE_STAGES:
            encoder, index = self.dense_stage(stage)
            return index.search(encoder.encode_queries(list(texts)), k=k, mask=mask)
        return [self._retrieve(t, k, stage, mask) for t in texts]

    def candidate_sets(self, texts: Sequence[str], mask: np.ndarray | None = None, deep: int = 0) -> list[Candidates]:
        """Per query: the reranked candidates (union of the bm25 and dense top ``rerank.depth``) with their
        stage scores and ranks and cross-encoder scores (all pairs of all queries in one batch run).
        Nothing personal: the same for every user (cacheable per query and filter)."""
        r = self.cfg.rerank
        both = self.stage_candidates(texts, mask, deep=deep)
        titles = self.products.titles
        pair_q = [t for t, (c, _, _) in zip(texts, both) for _ in range(len(c.rows))]
        pair_t = titles.take(row for c, _, _ in both for row in c.rows)
        ce = self.cross_encoder().predict(pair_q, pair_t)
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
            personal = personal_features(cand.rows, profile, self.facets(), now, pc.half_life_days * 86400.0,
                                         ev.bought_rows(profile))
        return feature_matrix(cand, ctr, pop, personal)

    def rank_candidates(self, cand: Candidates, k: int, profile=None, personalize: float = 1.0,
                        explain: bool = False, now: float | None = None) -> tuple[SearchResult, list[dict] | None]:
        """The final order of one query's candidates (learned ranker, or the z-score mix without one), the
        rest of the hybrid list below them down to ``k``, and per hit an explanation when asked."""
        r = self.cfg.rerank
        ranker = self.ranker()
        n = len(cand.rows)
        X = base = None
        if ranker is not None:
            X = self.features(cand, profile if ranker.uses_personal else None, now)
            score, base = ranker.score(X, personalize, warm=profile is not None)
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
            stages = {s: {"score": float(cand.stage_scores[s][i]), "rank": int(cand.stage_ranks[s][i])}
                      for s in cand.stage_scores}
            notes.append({
                "stages": stages, "rrf": float(cand.rrf[i]), "cross_encoder": float(cand.ce[i]),
                "first_stage": float(cand.first[i]),
                "ctr": float(X[i, FEATURES.index("ctr")]), "popularity": float(X[i, FEATURES.index("popularity")]),
                "personal": {f: float(X[i, FEATURES.index(f)]) for f in PERSONAL},
                "ranker": "lightgbm" if ranker is not None else f"z-score mix (weight {r.weight})",
                "non_personal_score": float(base[i]) if base is not None else float(score[i]),
                "final_score": float(score[i]),
            })
        notes += [{"stages": {}, "note": "below the reranked candidates: hybrid order"}
                  for _ in range(len(res.rows) - len(notes))]
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
            return self._retrieve_batch(texts, k, stage, self.live)
        if stage == "rerank":
            return self._reranked(texts, k, self.live)
        return [self.retrieve(t, k=k, stage=stage) for t in texts]

    def query(self, text: str, k: int = 10, filters: dict | None = None, mask: np.ndarray | None = None,
              user_id: str | None = None, personalize: float = 1.0, explain: bool = False) -> list[Hit]:
        """Ranked hits for a query from the config's stages (fused when there are several).

        ``filters`` restricts results by category, brand or price range;
        ``mask`` (one bool per product row) is the general form.  Both are
        applied inside each stage's retrieval, before its top-k cut.
        ``user_id`` personalizes the order with the learned ranker's personal
        features, scaled by ``personalize`` (0 = off, 1 = full); no user, an
        unknown user or one with no events get exactly the non-personalized
        ranking.  ``explain=True`` gives each hit its stage scores and ranks,
        cross-encoder score, personal features and final score.
        """
        if not isinstance(text, str):
            raise TypeError(f"query text must be a string, not {type(text).__name__}")
        if k < 1:
            raise ValueError("k must be >= 1")
        if not 0.0 <= personalize <= 1.0:
            raise ValueError(f"personalize must be within [0, 1], got {personalize}")
        fmask = self.filter_mask(filters)
        if fmask is not None:
            mask = fmask if mask is None else (fmask & np.asarray(mask, dtype=bool))
        mask = self._with_live(mask)
        if self.cfg.rerank.model:
            cand = self.candidate_sets([text], mask, self._tail_depth(k))[0]
            ranker = self.ranker()
            profile = self.profile(user_id) if (user_id is not None and personalize > 0 and ranker is not None
                                                 and ranker.uses_personal) else None
            res, notes = self.rank_candidates(cand, k, profile, personalize, explain)
            return self.hits(res, notes)
        stages = self.cfg.search.stages
        if len(stages) == 1:
            return self.hits(self._retrieve(text, k, stages[0], mask))
        return self.hits(self._fused(text, k, stages, mask))

    def hits(self, res: SearchResult, notes: list[dict] | None = None) -> list[Hit]:
        ids, titles = self.products.ids, self.products.titles
        return [Hit(ids[int(r)], titles[int(r)], float(s), i + 1, notes[i] if notes else None)
                for i, (r, s) in enumerate(zip(res.rows, res.scores))]

    def query_many(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        return [self.query(t, k=k) for t in texts]
