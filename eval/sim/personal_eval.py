"""The personalization benchmark's scoring of the simulated judgment sessions (:mod:`eval.sim.personal`): each
session ranked by the ranker without and with the user's profile (at every value of the ``personalize`` knob
asked for) and by the references (the simulator's relevance alone, its Bayes posteriors, the oracle)."""

from __future__ import annotations

import numpy as np

from core import metrics
from core.bootstrap import paired_bootstrap
from engine.profiles import bought_rows
from eval.sim.shoppers import DAY, HistoryPosterior, World, click_logit, taste_of


def evaluate_sessions(
    engine,
    ranker,
    world: World,
    sessions: list,
    pit,
    profile_of,
    users: dict | None = None,
    strength: float = 0.0,
    bayes: dict[str, HistoryPosterior] | None = None,
    knobs: tuple[float, ...] = (),
) -> dict[str, np.ndarray]:
    """Per eval session: NDCG@10 and MRR@10, base (personalize=0) and personal (1), whether warm, and (given the
    simulated users) the oracle: the simulator's own click utility, true taste included (a ceiling), and
    ``relevance``: the simulator's relevance alone (no taste; the base the Bayes ranking adds its posterior to);
    ``bayes``: named posteriors (``bayes``: from the history alone, ``bayes_upper``: the other facets' truth given),
    each ranking by its expected clicks; ``knobs``: more values of ``personalize`` (``personal@<knob>``)."""
    from engine.features import feature_matrix, personal_features, timeline_ctr_popularity
    from engine.taste import evidence_rows

    cfg = engine.cfg
    hl, shl = cfg.personal.half_life_days * DAY, cfg.personal.session_minutes * 60.0
    thl = cfg.personal.taste_half_life_days * DAY
    row_of = engine.products.row_map()
    fac = engine.facets()
    runs_b, runs_p, runs_o, runs_r, qrels, warm = {}, {}, {}, {}, {}, []
    runs_y: dict[str, dict] = {name: {} for name in bayes or {}}
    runs_k: dict[float, dict] = {k: {} for k in knobs}
    for i, (uid, q, t, gains) in enumerate(sessions):
        c = world.cands[q]
        prof = profile_of(uid)
        ctr, pop = timeline_ctr_popularity(pit.timeline, c.rows, t, cfg.personal.ctr_prior)
        personal = personal_features(c.rows, prof, fac, t, hl, bought_rows(prof, row_of), shl) if prof else None
        X = feature_matrix(c, ctr, pop, personal)
        ev = evidence_rows(prof, fac, c.rows, t, thl) if prof is not None and ranker.taste is not None else None
        full, base = ranker.score(X, 1.0, warm=prof is not None, evidence=ev)
        sid = f"s{i}"
        runs_b[sid] = metrics.top_ids(c.rows, base)
        runs_p[sid] = metrics.top_ids(c.rows, full)
        for k in knobs:
            runs_k[k][sid] = metrics.top_ids(c.rows, ranker.score(X, k, warm=prof is not None, evidence=ev)[0])
        if users is not None:
            util = click_logit(world.z[q], taste_of(world, users[uid], c.rows), strength)
            runs_o[sid] = metrics.top_ids(c.rows, util)
            runs_r[sid] = metrics.top_ids(c.rows, world.z[q])
        for name, post in (bayes or {}).items():
            runs_y[name][sid] = metrics.top_ids(c.rows, post.expected_clicks(uid, q))
        qrels[sid] = {str(r): g for r, g in gains.items()}
        warm.append(prof is not None)
    out = {"warm": np.asarray(warm, dtype=bool)}
    for name, fn in (("ndcg@10", metrics.ndcg), ("mrr@10", metrics.mrr)):
        out[f"{name}/base"] = fn(qrels, runs_b, 10, per_query=True)
        out[f"{name}/personal"] = fn(qrels, runs_p, 10, per_query=True)
        if runs_o:
            out[f"{name}/oracle"] = fn(qrels, runs_o, 10, per_query=True)
            out[f"{name}/relevance"] = fn(qrels, runs_r, 10, per_query=True)
        for ref, runs in runs_y.items():
            out[f"{name}/{ref}"] = fn(qrels, runs, 10, per_query=True)
        for k, runs in runs_k.items():
            out[f"{name}/personal@{k:g}"] = fn(qrels, runs, 10, per_query=True)
    return out


def summarize(res: dict[str, np.ndarray], sessions: list, seed: int) -> dict:
    out = {}
    for group, sel in (("warm", res["warm"]), ("cold", ~res["warm"])):
        users = {sessions[i][0] for i in np.flatnonzero(sel)}
        block = {"n_users": len(users), "n_queries": int(sel.sum())}
        for m in ("ndcg@10", "mrr@10"):
            block[m] = {
                k: round(v, 4)
                for k, v in paired_bootstrap(res[f"{m}/base"][sel], res[f"{m}/personal"][sel], seed=seed).items()
            }
            for ceiling in ("oracle", "bayes", "bayes_upper", "relevance"):
                if f"{m}/{ceiling}" in res:
                    block[m][ceiling] = (
                        round(float(res[f"{m}/{ceiling}"][sel].mean()), 4) if sel.any() else float("nan")
                    )
        out[group] = block
    knobs = sorted(float(k.rsplit("@", 1)[1]) for k in res if k.startswith("ndcg@10/personal@"))
    if knobs:  # the warm users' lift at each value of the knob
        sel = res["warm"]
        out["knobs"] = {
            f"{k:g}": {
                m: {
                    key: round(v, 4)
                    for key, v in paired_bootstrap(
                        res[f"{m}/base"][sel], res[f"{m}/personal@{k:g}"][sel], seed=seed
                    ).items()
                }
                for m in ("ndcg@10", "mrr@10")
            }
            for k in knobs
        }
    return out
