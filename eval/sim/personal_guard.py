"""The personalization benchmark's guard (:mod:`eval.sim.personal`): on the config's judged dev queries, a
synthetic history (the judged product's group, or random products) must not cost relevance; and the config's own
learned ranker, without a user, against the z-score mix on the same candidates."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from core import metrics
from core.bootstrap import paired_bootstrap
from engine.profiles import ProfileSettings
from eval.sim.shoppers import DAY, EXAMINE, START, HistoryPosterior, shop_order, standardized
from finetune.ranker_sessions import Session


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
    knobs: tuple[float, ...] = (),
    bayes: tuple | None = None,
) -> dict:
    """MRR@10 on judged dev queries with a synthetic history: (a) the judged product's group, (b) random.
    With ``shipped`` (the config's own learned ranker) also its non-personal ranking against the z-score mix
    on the same candidates (``ranker_vs_mix``); ``knobs``: the same at more values of ``personalize``;
    ``bayes``: ``(world, users, strength)`` of the simulation, to rank the same histories by the simulator's own
    Bayes posterior against its relevance alone (``bayes``: what a perfect learner of the simulated tastes pays)."""
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
    runs_k = {(name, k): {} for name in ("group_history", "random_history") for k in knobs}
    runs_y = {"relevance": {}, "group_history": {}, "random_history": {}}
    zpos = position_z(bayes[0], seed) if bayes else None
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
        if bayes:
            z = standardized(mix)
            runs_y["relevance"][qid] = metrics.top_ids(c.rows, z)
        for name, pool in (("group_history", same), ("random_history", np.arange(len(groups)))):
            hist = rng.choice(pool, size=min(n_history, len(pool)), replace=False) if len(pool) else []
            prof = Profile()
            lists = []
            for i, r in enumerate(hist):  # a session: the product among 9 random others shown, then clicked
                ts = t - DAY + 100 * i
                shown = [int(r)] + rng.integers(0, len(groups), size=9).tolist()
                lists.append(shown)
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
            for k in knobs:
                runs_k[name, k][qid] = metrics.top_ids(
                    c.rows, ranker.score(X, k, warm=prof is not None, evidence=ev)[0]
                )
            if bayes:
                runs_y[name][qid] = metrics.top_ids(c.rows, bayes_clicks(bayes, lists, zpos, c, z))
    base = metrics.mrr(qrels, runs["base"], 10, per_query=True)
    out = {}
    for name in ("group_history", "random_history"):
        pers = metrics.mrr(qrels, runs[name], 10, per_query=True)
        out[name] = {
            "n_queries": len(qrels),
            "mrr@10": {k: round(v, 4) for k, v in paired_bootstrap(base, pers, seed=seed).items()},
        }
        for k in knobs:
            pers = metrics.mrr(qrels, runs_k[name, k], 10, per_query=True)
            out[name].setdefault("knobs", {})[f"{k:g}"] = {
                key: round(v, 4) for key, v in paired_bootstrap(base, pers, seed=seed).items()
            }
    if bayes:
        rel = metrics.mrr(qrels, runs_y["relevance"], 10, per_query=True)
        out["bayes"] = {
            name: {
                "n_queries": len(qrels),
                "mrr@10": {
                    k: round(v, 4)
                    for k, v in paired_bootstrap(
                        rel, metrics.mrr(qrels, runs_y[name], 10, per_query=True), seed=seed
                    ).items()
                },
            }
            for name in ("group_history", "random_history")
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


def position_z(world, seed: int, draws: int = 20) -> np.ndarray:
    """The mean relevance ``z`` the simulated shop shows at each of its 10 positions (its Plackett-Luce draws):
    what the Bayes reference assumes of a guard session, which shows products without a query."""
    rng = np.random.default_rng(seed)
    total, n = np.zeros(len(EXAMINE)), 0
    for q in world.queries:
        for _ in range(draws):
            shown = shop_order(world, q, rng)
            total[: len(shown)] += world.z[q][shown]
            n += 1
    return total / max(n, 1)


def bayes_clicks(bayes: tuple, lists: list[list[int]], zpos: np.ndarray, cands, z: np.ndarray) -> np.ndarray:
    """The simulator's expected clicks of a dev query's candidates for a shopper whose history is ``lists`` (each
    shown in order, its first product clicked), the history read by :class:`HistoryPosterior`."""
    world, users, strength = bayes
    sessions, qc, qz = [], {"dev": cands}, {"dev": z}
    for i, shown in enumerate(lists):
        qc[f"h{i}"], qz[f"h{i}"] = SimpleNamespace(rows=np.asarray(shown)), zpos[: len(shown)]
        sessions.append(Session("guard", f"h{i}", 0.0, gains={shown[0]: 1.0}, shown=list(shown)))
    mini = dataclasses.replace(world, cands=qc, z=qz)
    post = HistoryPosterior(mini, {**users, "guard": next(iter(users.values()))}, sessions, strength)
    return post.expected_clicks("guard", "dev")
