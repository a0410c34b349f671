"""The hybrid stage: the first stages' lists of one query merged (:mod:`engine.fusion`), with optional
pseudo-relevance feedback for the dense and keyword stages.

Feedback (``search.fusion.feedback: m``) is Rocchio's (1971) in the embedding space: the fused list's top ``m``
products are taken as relevant, each dense stage's query vector moves towards their mean
(``q' = α q + (1 − α) mean(v)``, renormalized; α is ``feedback_weight``), that stage searches again, and the
lists are fused once more. Keyword matches among the top ``m`` pull the dense query towards products that
share the query's words, where the bi-encoder alone missed them: more of the relevant products come into the
top 100. It costs one more vector search per dense stage; the query is encoded once. The plain fusion's first
``feedback_below`` products stay where they are (feedback drifts the query: on Home Depot dev it lowered
MRR@10 by 0.008 when it reordered the top too), feedback orders what follows, and a request no deeper than them
(a first page) does not pay for it.

Word feedback (``feedback_terms``) does the same for the keyword stage, after RM3 (Abdul-Jaleel et al. 2004):
the words of highest idf that the query lacks and at least ``feedback_min_docs`` of those titles share are added
to the BM25 query with a small weight (Home Depot dev: ``5 1/4 deckboard`` gains decking, 5.25in, composite,
board; ``46 high output grow florescent bulb`` gains fluorescent, t5).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from core.config import SearchConfig
from engine.first_stages import FirstStages
from engine.fusion import fuse
from engine.types import DENSE_STAGES, SearchResult
from indexer.bm25 import BM25Index


def feedback_query(qvec: np.ndarray, vectors: np.ndarray, rows: np.ndarray, weight: float) -> np.ndarray:
    """``weight · q + (1 − weight) · mean(vectors[rows])``, unit length; ``q`` itself where ``rows`` is empty."""
    q = np.asarray(qvec, dtype=np.float32).reshape(1, -1)
    if len(rows) == 0:
        return q
    moved = weight * q + (1.0 - weight) * np.asarray(vectors[np.asarray(rows)], dtype=np.float32).mean(axis=0)
    norm = float(np.linalg.norm(moved))
    return moved / norm if norm > 0 else q


def hybrid(
    first: FirstStages,
    encode: Callable[[str, list[str]], np.ndarray],
    vectors: Callable[[str], np.ndarray | None],
    text: str,
    k: int,
    stages: Sequence[str],
    mask: np.ndarray | None,
    sc: SearchConfig,
    bm25: BM25Index | None = None,
) -> SearchResult:
    """The top ``k`` of ``stages`` for one understood ``text``: each stage ``search.candidates`` deep (or ``k``),
    fused as ``search.fusion`` says; ``vectors(stage)`` is a dense stage's product vectors by row (what feedback
    averages); ``bm25`` the local keyword index that word feedback (``feedback_terms``) re-scores with."""
    fu, depth, span = sc.fusion, max(k, sc.candidates), sc.candidates
    weights = [fu.weights.get(s, 1.0) for s in stages]
    qvecs = {s: encode(s, [text]) for s in stages if s in DENSE_STAGES}
    # word feedback adds to the BM25 scores of the first search: scored once, here (backend local: the config says)
    words = bm25 is not None and fu.feedback > 0 and fu.feedback_terms > 0 and k > fu.feedback_below
    base = bm25.scores(text) if words else None
    lists = []
    for s in stages:
        if s in qvecs:
            lists.append(first.dense(s, qvecs[s], depth, mask)[0])
        else:
            lists.append(bm25.top(base, depth, mask) if base is not None else first.bm25(text, depth, mask))
    keep = fu.feedback_below
    if fu.feedback <= 0 or k <= keep or not (qvecs or fu.feedback_terms):  # a page the plain fusion answers
        return fuse(lists, k, fu.method, weights, fu.c, span)
    plain = fuse(lists, max(fu.feedback, keep), fu.method, weights, fu.c, span)
    for j, s in enumerate(stages):
        if s in qvecs:
            v = vectors(s)
            if v is None:
                raise ValueError(f"search.fusion.feedback: the {s} index holds no product vectors; rebuild it")
            q = feedback_query(qvecs[s][0], v, plain.rows[: fu.feedback], fu.feedback_weight)
            lists[j] = first.dense(s, q, depth, mask)[0]
        elif s == "bm25" and base is not None:
            extra = bm25.feedback_scores(text, plain.rows[: fu.feedback], fu.feedback_terms, fu.feedback_min_docs)
            if extra is not None:
                lists[j] = bm25.top(base + fu.feedback_term_weight * extra, depth, mask)
    after = fuse(lists, k + keep, fu.method, weights, fu.c, span)
    return keep_top(plain, after, keep, k)


def keep_top(plain: SearchResult, after: SearchResult, keep: int, k: int) -> SearchResult:
    """``plain``'s first ``keep`` products, then ``after``'s others, ``k`` in all; the scores of the latter
    shifted below the former's so that scores still fall with the rank."""
    top, top_scores = plain.rows[:keep], plain.scores[:keep]
    rest = ~np.isin(after.rows, top)
    rows, scores = after.rows[rest][: k - len(top)], after.scores[rest][: k - len(top)].astype(np.float64)
    if len(top) and len(scores) and scores[0] >= top_scores[-1]:
        scores = scores - (scores[0] - float(top_scores[-1])) - 1e-6
    return SearchResult(np.concatenate([top, rows]), np.concatenate([top_scores, scores]).astype(np.float32))
