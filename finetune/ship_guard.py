"""Does a retrained ranker beat the serving one?  The measures `make retrain` decides by.

- **Held-out searches** (:func:`holdout_ranks`): every engaged search after the time cut is ranked again, over
  the engine's full candidate list with its features as of the search's time, by the serving model and by each
  new one; the clipped IPS estimate of clicks@k (:func:`finetune.counterfactual.guard`) compares them per search,
  searches without an engagement counting as zero for both, with a paired bootstrap interval.  A new model
  ships only when the whole interval lies above zero.
- **Judged dev queries** (:func:`judged_check`), where the config has them: NDCG@10 of the serving and the new
  model on each, without a user, with product counts as of the window's end; the new one may lose at most
  ``judged_tolerance``.
"""

from __future__ import annotations

import numpy as np

from engine.features import FEATURES, feature_matrix, timeline_ctr_popularity
from finetune.counterfactual import guard, ranks_of
from finetune.ranker_sessions import PointInTime, Session, candidate_cache, session_features

NOT_RANKED = 1_000_000  # the rank of an engaged product a ranking does not hold


def scores_of(model, X: np.ndarray) -> np.ndarray:
    """A ranker's scores of one query's candidates (a served z-score mix is :meth:`engine.ranker.Ranker.mix`)."""
    warm = bool(X[:, FEATURES.index("history")].any())
    return model.score(X, 1.0, warm=warm)[0]


def holdout_ranks(
    engine, sessions: list[Session], pit: PointInTime, models: dict, cands: dict, cands_of: dict | None = None
) -> dict:
    """Per engaged row of the held-out sessions: the session index, its logged rank, its gain, and its rank under
    each of ``models`` (name -> Ranker); ``cands``: the candidate sets per query; ``cands_of``: a model's own
    candidate sets where it reads another cross-encoder's scores (the same rows: the first stages are shared)."""
    row_of = engine.products.row_map()
    pc = engine.cfg.personal
    out: dict = {"search": [], "logged_rank": [], "gain": [], **{name: [] for name in models}}
    for i, s in enumerate(sessions):
        c = cands[s.query]
        if not len(c.rows):
            continue
        hl = pc.half_life_days * 86400.0
        X = {id(cands): session_features(engine, c, s, pit, pc.ctr_prior, row_of, hl)}
        where = {int(r): j for j, r in enumerate(c.rows)}
        shown_rank = {r: s.offset + j + 1 for j, r in enumerate(s.shown) if r >= 0}
        ranks = {}
        for name, m in models.items():
            sets = (cands_of or {}).get(name, cands)
            if id(sets) not in X:
                X[id(sets)] = session_features(engine, sets[s.query], s, pit, pc.ctr_prior, row_of, hl)
            ranks[name] = ranks_of(scores_of(m, X[id(sets)]))
        for r, g in s.gains.items():
            if r not in shown_rank:
                continue
            out["search"].append(i)
            out["logged_rank"].append(shown_rank[r])
            out["gain"].append(g)
            for name in models:
                j = where.get(r)
                out[name].append(int(ranks[name][j]) if j is not None else NOT_RANKED)
    return {k: np.asarray(v) for k, v in out.items()}


def ips_guard(rows: dict, serving: str, new: str, n_searches: int, propensity, k: int, clip: float, seed: int):
    """The clipped IPS clicks@k of ``new`` against ``serving`` over ``n_searches`` held-out searches (those
    without an engaged row count zero for both)."""
    if not len(rows["search"]):
        return {"searches": n_searches, "ship": False, "why": "no engaged held-out search to compare on"}
    search = np.asarray(rows["search"], dtype=np.int64)
    return guard(
        search,
        rows["logged_rank"],
        rows[serving],
        rows[new],
        np.ones(len(search), dtype=bool),
        propensity,
        k=k,
        clip=clip,
        seed=seed,
        n_searches=max(n_searches, int(search.max()) + 1),
    )


def judged_check(
    engine, judged, pit: PointInTime, until: float, models: dict, tolerance: float, cache_dir=None, engines=None
):
    """NDCG@10 of ``models`` (``serving`` and ``new``) on judged queries (``core.formats.judged.JudgedQueries``),
    no user, product counts and query clicks as of ``until``; ``passed``: ``new`` loses at most ``tolerance``.
    ``engines``: a model's own engine where it reads another cross-encoder's scores (default ``engine``)."""
    from core import metrics
    from core.bootstrap import paired_bootstrap

    qids = [q for q in judged.texts if judged.relevance.get(q)]
    texts = [judged.texts[q] for q in qids]
    engine_of = {name: (engines or {}).get(name, engine) for name in models}
    sets = {id(e): candidate_cache(e, texts, progress=False, cache_dir=cache_dir) for e in engine_of.values()}
    cands = sets[id(engine_of["serving"])]
    row_of = engine.products.row_map()
    qrels = {q: {str(row_of[p]): g for p, g in judged.relevance[q].items() if p in row_of} for q in qids}
    runs: dict = {name: {} for name in models}
    for q in qids:
        c = cands[judged.texts[q]]
        if not len(c.rows):
            continue
        ctr, pop = timeline_ctr_popularity(pit.timeline, c.rows, until, engine.cfg.personal.ctr_prior)
        qc = pit.query_clicks.at(until).lookup(judged.texts[q], c.rows) if pit.query_clicks is not None else None
        for name, m in models.items():
            c_m = sets[id(engine_of[name])][judged.texts[q]]  # the same rows, this model's cross-encoder scores
            runs[name][q] = metrics.top_ids(c_m.rows, scores_of(m, feature_matrix(c_m, ctr, pop, None, qc)))
    per = {name: metrics.ndcg(qrels, run, 10, per_query=True) for name, run in runs.items()}
    out: dict = {"queries": len(qids), "ndcg@10": {n: round(float(v.mean()), 4) for n, v in per.items()}}
    d = paired_bootstrap(per["serving"], per["new"])
    out["new_minus_serving"] = {k: round(d[k], 4) for k in ("diff", "ci_low", "ci_high")}
    # the queries the window's traffic searched, and the rest (where the new model must not lose)
    logged = pit.query_clicks.query_ids if pit.query_clicks is not None else {}
    had = np.array([judged.texts[q] in logged for q in qids if q in runs["serving"]], dtype=bool)
    diff = per["new"] - per["serving"]
    for name, sel in (("with_traffic", had), ("without_traffic", ~had)):
        out[name] = {"queries": int(sel.sum()), "diff": round(float(diff[sel].mean()), 4) if sel.any() else None}
    out["passed"] = bool(d["diff"] >= -tolerance)
    return out
