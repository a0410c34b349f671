"""The one home of the types every package shares: the error base class, a stage's result, stage names, what
an identifier may hold.

It lives in the bottom layer (``core``), which every package imports and which imports none of them.
``engine.types`` re-exports it beside the engine's own result types.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np


class EcomsearchError(Exception):
    """Base class of every error this project raises on purpose; the message says what is wrong and
    what to do.  Subclasses also derive from the matching built-in (ValueError, FileNotFoundError, ...)."""


# what an identifier (product id, user id) may hold: printable text, at most this long, no control or
# line-separator characters (a stored list of ids can never split one in two, a log line never breaks)
MAX_ID_CHARS = 256
_BAD_ID_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def id_problem(value: object) -> str | None:
    """Why ``value`` cannot be an identifier (None: it can).  Leading and trailing spaces are not part of an
    id (callers strip them); an empty id, more than :data:`MAX_ID_CHARS` characters, or any control, format,
    unassigned or line/paragraph-separator character (``\\n``, ``\\r``, U+2028, U+200B, ...) is refused."""
    if isinstance(value, bool) or not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    v = value.strip()
    if not v:
        return "missing or empty"
    if len(v) > MAX_ID_CHARS:
        return f"{len(v):,} characters, at most {MAX_ID_CHARS}"
    for i, ch in enumerate(v):
        if unicodedata.category(ch) in _BAD_ID_CATEGORIES:
            return f"holds the control or separator character U+{ord(ch):04X} at position {i}; ids are printable text"
    return None


@dataclass
class SearchResult:
    rows: np.ndarray  # int64 product rows, best first
    scores: np.ndarray  # float32, higher is better
    lifted: np.ndarray | None = None  # bool per row: personalization ranked it higher than without (final_rank)
    # per row: the click log-odds the ranker's taste model reads in its non-personal score (nan: none), what an
    # impression logs for the shoppers' taste evidence (engine.taste_counts)
    relevance: np.ndarray | None = None


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
