"""The personalization benchmark's guard (:mod:`eval.sim.personal`): on the config's judged dev queries, a
synthetic history (the judged product's group, or random products) must not cost relevance; and the config's own
learned ranker, without a user, against the z-score mix on the same candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core import metrics
from core.bootstrap import paired_bootstrap
from engine.profiles import ProfileSettings
from eval.sim.shoppers import DAY, START


def guard(
    engine,
    ranker,
    dev_path: Path,
    n_history: int,
    seed: int,
    progress: bool,
    limit: int | None = None,
    cache_dir: Path | None = None,
    shipped=None,
) -> dict:
    """MRR@10 on judged dev queries with a synthetic history: (a) the judged product's group, (b) random.
    With ``shipped`` (the config's own learned ranker) also its non-personal ranking against the z-score mix
    on the same candidates (``ranker_vs_mix``)."""
    from engine.rerank import combine

    from engine.features import feature_matrix, personal_features
    from engine.events.impressions import searches_in_log
    from engine.taste import evidence_rows
    from engine.profiles import Profile, apply_event
    from core.formats.judged import read_queries
    from finetune.ranker_sessions import candidate_cache

    judged = read_queries(dev_path)
    qids = list(judged.texts)[:limit] if limit else list(judged.texts)
    texts = [judged.texts[q] for q in qids]
    cands = candidate_cache(engine, texts, progress=progress, cache_dir=cache_dir)
    fac = engine.facets()
    row_of = engine.products.row_map()
    settings = ProfileSettings.from_config(engine.cfg.personal)
    hl = settings.half_life
    rng = np.random.default_rng(seed)
    t = START
    runs = {"base": {}, "group_history": {}, "random_history": {}, "mix": {}, "shipped": {}}
    qrels = {}
    groups = np.asarray(fac.group)
    for qid, text in zip(qids, texts):
        c = cands[text]
        rel = {p: g for p, g in judged.relevance[qid].items() if p in row_of}
        if not rel:
            continue
        qrels[qid] = {str(row_of[p]): g for p, g in rel.items()}
        target = row_of[next(iter(rel))]
        X0 = feature_matrix(c, np.zeros(len(c.rows)), np.zeros(len(c.rows)), None)
        _, base = ranker.score(X0, 0.0, warm=False)
        runs["base"][qid] = metrics.top_ids(c.rows, base)
        mix = combine(c.ce, c.first, engine.cfg.rerank.weight)
        runs["mix"][qid] = metrics.top_ids(c.rows, mix)
        if shipped is not None:
            s_score, _ = shipped.score(X0, 0.0, warm=False)
            runs["shipped"][qid] = metrics.top_ids(c.rows, s_score)
        same = np.flatnonzero(groups == groups[target])
        same = same[~np.isin(same, [row_of[p] for p in rel])]
        for name, pool in (("group_history", same), ("random_history", np.arange(len(groups)))):
            hist = rng.choice(pool, size=min(n_history, len(pool)), replace=False) if len(pool) else []
            prof = Profile()
            for i, r in enumerate(hist):  # a session: the product among 9 random others shown, then clicked
                ts = t - DAY + 100 * i
                shown = [int(r)] + rng.integers(0, len(groups), size=9).tolist()
                events = [("impression", o, ts + j) for j, o in enumerate(shown)] + [("click", int(r), ts + 20)]
                # what the profile counts as seen follows personal.exposure, as in training; ranks feed the taste
                keep, ranks = searches_in_log(*zip(*(("u", "q", e, o, t) for e, o, t in events)))
                if settings.exposure != "examined":
                    keep = [True] * len(events)
                for (e, o, te), k, rk in zip(events, keep, ranks):
                    apply_event(prof, fac, o, engine.products.ids[o], e, te, settings, rk, k)
            prof = prof if prof.weight > 0 else None
            personal = personal_features(c.rows, prof, fac, t, hl, None, settings.session_half_life) if prof else None
            X = feature_matrix(c, np.zeros(len(c.rows)), np.zeros(len(c.rows)), personal)
            ev = (
                evidence_rows(prof, fac, c.rows, t, settings.taste_half_life)
                if prof is not None and ranker.taste is not None
                else None
            )
            full, _ = ranker.score(X, 1.0, warm=prof is not None, evidence=ev)
            runs[name][qid] = metrics.top_ids(c.rows, full)
    base = metrics.mrr(qrels, runs["base"], 10, per_query=True)
    out = {}
    for name in ("group_history", "random_history"):
        pers = metrics.mrr(qrels, runs[name], 10, per_query=True)
        out[name] = {
            "n_queries": len(qrels),
            "mrr@10": {k: round(v, 4) for k, v in paired_bootstrap(base, pers, seed=seed).items()},
        }
    if shipped is not None:
        # on all judged dev queries (one missing from the candidates scores 0 for both)
        allq = {qid: qrels.get(qid, {"-": 0.0}) for qid in qids}
        block = {"n_queries": len(allq)}
        for name, fn in (("mrr@10", metrics.mrr), ("ndcg@10", metrics.ndcg)):
            a = fn(allq, runs["mix"], 10, per_query=True)
            b = fn(allq, runs["shipped"], 10, per_query=True)
            res = paired_bootstrap(a, b, seed=seed)
            block[name] = {
                "zscore_mix": round(res["base"], 4),
                "ranker": round(res["personal"], 4),
                **{k: round(res[k], 4) for k in ("diff", "ci_low", "ci_high", "p_value")},
            }
        out["ranker_vs_mix"] = block
    return out
