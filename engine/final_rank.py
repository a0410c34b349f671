"""The final order of one query's candidates: the learned ranker over the features of :mod:`engine.features`
(with the user's personal features), or the z-score mix of cross-encoder and first-stage scores without one;
below them the rest of the hybrid list; and per hit, when asked, what made its place.
"""

from __future__ import annotations

import time

import numpy as np

from engine.features import FEATURES, PERSONAL, Candidates, ctr_popularity, feature_matrix, personal_features
from engine.fusion import reciprocal_rank_fusion
from engine.rerank import combine
from engine.text_match import TEXT_MATCH
from engine.types import SearchResult
from core.config import PersonalConfig, RerankConfig


def candidate_features(
    cand: Candidates, events, facets, pc: PersonalConfig, profile=None, now: float | None = None, query_clicks=None
) -> np.ndarray:
    """The ranker's feature rows (:data:`engine.features.FEATURES`) of one query's candidates for a user
    (``profile`` None: the cold-user values); counts from the event store ``events``; ``query_ctr`` from
    ``query_clicks`` (:class:`engine.query_clicks.QueryClicks`, the ranker's snapshot) where there is one."""
    stats = events.stats(pc.stats_refresh_seconds)
    ctr, pop = ctr_popularity(stats.counts[cand.rows], stats.totals, pc.ctr_prior)
    qctr = query_clicks.lookup(cand.query, cand.rows) if query_clicks is not None else None
    personal = None
    if profile is not None:
        now = time.time() if now is None else now
        personal = personal_features(
            cand.rows,
            profile,
            facets,
            now,
            pc.half_life_days * 86400.0,
            events.bought_rows(profile),
            pc.session_minutes * 60.0,
        )
    return feature_matrix(cand, ctr, pop, personal, qctr)


def taste_evidence(cand: Candidates, profile, facets, pc: PersonalConfig, now: float | None = None) -> np.ndarray:
    """The user's taste evidence of each candidate (:func:`engine.taste.evidence_rows`) as of ``now``."""
    from engine.taste import evidence_rows

    now = time.time() if now is None else now
    return evidence_rows(profile, facets, cand.rows, now, pc.taste_half_life_days * 86400.0)


def rank_candidates(
    cand: Candidates,
    k: int,
    r: RerankConfig,
    ranker,
    features,
    profile=None,
    personalize: float = 1.0,
    explain: bool = False,
    teacher=None,
    evidence=None,
) -> tuple[SearchResult, list[dict] | None]:
    """The final order of one query's candidates (``ranker``, or the z-score mix when None), the rest of the
    hybrid list below them down to ``k``, and per hit an explanation when asked.  ``features(cand, profile)``
    gives the feature rows, ``evidence(cand, profile)`` the user's taste evidence (for a ranker with a taste
    model); ``teacher(query, rows)``, when given, the cascade's scores of the top ``r.teacher_top``
    (:func:`cascade`)."""
    n = len(cand.rows)
    X = base = None
    if ranker is not None:
        X = features(cand, profile if ranker.uses_personal else None)
        ev = evidence(cand, profile) if evidence is not None and ranker.taste is not None and profile else None
        score, base = ranker.score(X, personalize, warm=profile is not None, evidence=ev)
        # a tree ensemble scores in steps: candidates it cannot tell apart keep the z-score mix's order
        mix = combine(cand.ce, cand.first, r.weight)
        order = np.lexsort((-mix, -score))
    else:
        score = combine(cand.ce, cand.first, r.weight)
        order = np.argsort(-score, kind="stable")
    taught = None
    if teacher is not None and n > 1 and cand.query is not None:
        score, order, taught = cascade(cand, score, order, r, teacher)
    rows, scores = cand.rows[order], score[order].astype(np.float32)
    relevance = None
    if base is not None and ranker.taste is not None:
        relevance = ranker.taste.relevance_logit(base[order]).astype(np.float32)
    lifted = np.zeros(len(rows), dtype=bool)
    if base is not None and profile is not None:  # ranked higher with the shopper's history than without it
        base_pos = np.empty(n, dtype=np.int64)
        base_pos[np.lexsort((-mix, -base))] = np.arange(n)
        lifted = base_pos[order] > np.arange(n)
    if k > n:  # the hybrid ranking continues below the reranked candidates
        tail = reciprocal_rank_fusion(cand.lists, k)
        tail_rows = tail.rows[~np.isin(tail.rows, rows)][: k - n]
        floor = (scores.min() if n else 0.0) - 1.0
        rows = np.concatenate([rows, tail_rows])
        scores = np.concatenate([scores, floor - np.arange(len(tail_rows), dtype=np.float32)])
        lifted = np.concatenate([lifted, np.zeros(len(tail_rows), dtype=bool)])
        if relevance is not None:
            relevance = np.concatenate([relevance, np.full(len(tail_rows), np.nan, dtype=np.float32)])
    res = SearchResult(rows[:k], scores[:k], lifted[:k], relevance[:k] if relevance is not None else None)
    if not explain:
        return res, None
    if X is None:
        X = features(cand, None)
    notes = [_explain(cand, X, i, ranker, r, score, base) for i in order[:k]]
    if taught is not None:
        for note, i in zip(notes, order[:k]):
            if i in taught:
                note["teacher"] = taught[i]
    notes += [
        {"stages": {}, "note": "below the reranked candidates: hybrid order"} for _ in range(len(res.rows) - len(notes))
    ]
    return res, notes


def cascade(cand: Candidates, score: np.ndarray, order: np.ndarray, r: RerankConfig, teacher):
    """The cascade: ``teacher`` scores the final order's top ``r.teacher_top``, :func:`reorder_top` reorders
    them.  Returns (scores, order, per reordered candidate its teacher score)."""
    top = order[: r.teacher_top]
    t = np.asarray(teacher(cand.query, cand.rows[top]), dtype=np.float64)
    new, new_order = reorder_top(score, order, t, r.teacher_weight)
    return new, new_order, {int(i): float(x) for i, x in zip(top, t)}


def reorder_top(score: np.ndarray, order: np.ndarray, teacher: np.ndarray, weight: float):
    """The first ``len(teacher)`` of ``order`` (``teacher``: their scores) reordered among themselves by ``weight ·
    z(teacher) + (1 − weight) · z(score)`` (z over those few), the rest where they were; the block's new scores
    stay above every other.  Returns (scores, order)."""
    from engine.rerank import standardize

    top, rest = order[: len(teacher)], order[len(teacher) :]
    block = weight * standardize(teacher) + (1.0 - weight) * standardize(score[top])
    new = np.asarray(score, dtype=np.float64).copy()
    new[top] = new[order[0]] + 1.0 + block - block.min()
    within = np.lexsort((np.arange(len(top)), -new[top]))
    return new, np.concatenate([top[within], rest])


def _explain(cand: Candidates, X: np.ndarray, i: int, ranker, r: RerankConfig, score, base) -> dict:
    stages = {
        s: {"score": float(cand.stage_scores[s][i]), "rank": int(cand.stage_ranks[s][i])} for s in cand.stage_scores
    }
    out = {
        "stages": stages,
        "rrf": float(cand.rrf[i]),
        "cross_encoder": float(cand.ce[i]),
        "first_stage": float(cand.first[i]),
        "ctr": float(X[i, FEATURES.index("ctr")]),
        "popularity": float(X[i, FEATURES.index("popularity")]),
        "text_match": {f: float(X[i, FEATURES.index(f)]) for f in TEXT_MATCH},
        "personal": {f: float(X[i, FEATURES.index(f)]) for f in PERSONAL},
        "ranker": "lightgbm" if ranker is not None else f"z-score mix (weight {r.weight})",
        "non_personal_score": float(base[i]) if base is not None else float(score[i]),
        "final_score": float(score[i]),
    }
    if cand.base is not None:  # rerank.base_cosine: the zero-shot encoder's cosine
        out["base_cosine"] = float(cand.base[i])
    return out
