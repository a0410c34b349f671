"""The first stages behind one interface: top-k product rows of the keyword (bm25) and dense stages for a query,
with the deleted and filtered products masked inside each search.

:class:`LocalFirstStages` answers from this version's own builds (bm25s arrays, FAISS); :class:`MilvusFirstStages`
from the Milvus collection built from them (``search.backend: milvus``), the zero-shot ``dense-base`` comparison
stage still from its local FAISS index.  :func:`retrieve_batch` and :func:`stage_candidates` are what the engine
calls: a batch of queries through one stage (dense queries encoded together), and the fused union the
cross-encoder reranks.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import numpy as np

from engine.fusion import reciprocal_rank_fusion
from engine.types import DENSE_STAGES, RERANK_FIRST_STAGES, SearchResult
from indexer.bm25 import BM25Index


class FirstStages(ABC):
    """What the first stages answer from; ``mask`` (one bool per product row, or None) already excludes deleted
    products."""

    backend = ""

    @abstractmethod
    def bm25(self, text: str, k: int, mask: np.ndarray | None) -> SearchResult:
        """The keyword stage's top-k for one (understood) query text."""

    @abstractmethod
    def dense(self, stage: str, vecs: np.ndarray, k: int, mask: np.ndarray | None) -> list[SearchResult]:
        """A dense stage's top-k for each query vector."""

    def describe(self) -> dict[str, str]:
        """What answered, for :meth:`engine.version.IndexVersion.versions` (nothing beyond the builds locally)."""
        return {}


class LocalFirstStages(FirstStages):
    """This version's bm25 index and FAISS indexes (``dense_index(stage)`` loads one at first use)."""

    backend = "local"

    def __init__(self, bm25: BM25Index, dense_index: Callable[[str], object]):
        self.index = bm25
        self.dense_index = dense_index

    def bm25(self, text, k, mask):
        return self.index.search(text, k=k, mask=mask)

    def dense(self, stage, vecs, k, mask):
        return self.dense_index(stage).search(vecs, k=k, mask=mask)


class MilvusFirstStages(FirstStages):
    """The bm25 and dense stages from one Milvus collection (:class:`indexer.backends.milvus.MilvusStages`);
    other dense stages (``dense-base``) from ``local``."""

    backend = "milvus"

    def __init__(self, collection, local: LocalFirstStages):
        self.collection = collection
        self.local = local

    def bm25(self, text, k, mask):
        return self.collection.bm25_search(text, k, mask)

    def dense(self, stage, vecs, k, mask):
        if stage == "dense":
            return self.collection.dense_search(vecs, k, mask)
        return self.local.dense(stage, vecs, k, mask)

    def describe(self):
        return {"milvus": self.collection.collection}  # which collection answered the first stages


def retrieve_batch(
    first: FirstStages,
    encode: Callable[[str, list[str]], np.ndarray],
    texts: Sequence[str],
    k: int,
    stage: str,
    mask: np.ndarray | None,
    timings: dict | None = None,
) -> list[SearchResult]:
    """One first stage's top-k for each text (bm25 or a dense stage; ``encode(stage, texts)`` embeds the queries
    in one batch), timed into ``timings`` when given."""
    t0 = time.perf_counter()
    if stage in DENSE_STAGES:
        vecs = encode(stage, list(texts))
        t1 = time.perf_counter()
        out = first.dense(stage, vecs, k, mask)
        if timings is not None:
            timings[f"{stage}_encode"] = (t1 - t0) * 1000
            timings[f"{stage}_search"] = (time.perf_counter() - t1) * 1000
        return out
    if stage != "bm25":
        raise ValueError(f"{stage!r} is not a first stage (bm25 or a dense stage)")
    out = [first.bm25(t, k, mask) for t in texts]
    if timings is not None:
        timings[stage] = (time.perf_counter() - t0) * 1000
    return out


def stage_candidates(
    first: FirstStages,
    encode: Callable[[str, list[str]], np.ndarray],
    texts: Sequence[str],
    depth: int,
    mask: np.ndarray | None,
    stages: Sequence[str] = RERANK_FIRST_STAGES,
    deep: int = 0,
    timings: dict | None = None,
) -> list[tuple[SearchResult, list[SearchResult], list[SearchResult]]]:
    """Per query: the fused union of the stages' top ``depth``, those top lists, and each stage's full list
    (``deep`` long where a caller needs more of it)."""
    per_stage = [retrieve_batch(first, encode, texts, max(depth, deep), s, mask, timings) for s in stages]
    out = []
    for lists in zip(*per_stage):
        top = [SearchResult(r.rows[:depth], r.scores[:depth]) for r in lists]
        out.append((reciprocal_rank_fusion(top, len(stages) * depth), top, list(lists)))
    return out
