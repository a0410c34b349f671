"""The one home of the types every package shares: the error base class, a stage's result, stage names.

It lives at the bottom of the import graph (``indexer``), because the offline
jobs (indexer, finetune) and the online engine all use it and the engine
imports the indexer, never the other way round.  ``engine.types`` re-exports
it beside the engine's own result types.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class EcomsearchError(Exception):
    """Base class of every error this project raises on purpose; the message says what is wrong and
    what to do.  Subclasses also derive from the matching built-in (ValueError, FileNotFoundError, ...)."""


@dataclass
class SearchResult:
    rows: np.ndarray  # int64 product rows, best first
    scores: np.ndarray  # float32, higher is better


# stage names, spelled here only
BM25 = "bm25"
DENSE = "dense"
DENSE_BASE = "dense-base"  # the zero-shot base model (evaluation)
HYBRID = "hybrid"  # bm25 and dense merged by reciprocal rank fusion
RERANK = "rerank"  # the cross-encoder (and learned ranker) over the bm25 and dense candidates
STAGES = (BM25, DENSE, DENSE_BASE, HYBRID, RERANK)
DENSE_STAGES = (DENSE, DENSE_BASE)  # the stages with a dense index
FIRST_STAGES = (BM25, DENSE, DENSE_BASE, HYBRID)  # what search.stages may list
RERANK_FIRST_STAGES = (BM25, DENSE)  # whose candidates the cross-encoder reranks
