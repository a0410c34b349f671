"""`python -m eval.sim.personal --config C --out reports/personal/<config>`: does personalization lift, and never hurt?

**The users are simulated.**  Nothing here is real user behaviour; the
benchmark checks that the engine learns a taste when there is one, and that
it changes nothing when there is none.  The behaviour model:

- **Queries** come from the config's own training queries (the click log's
  or the judged pairs'), a seeded sample of ``--queries``.  Each query's
  candidates are the engine's (bm25 ∪ dense top ``rerank.depth``,
  cross-encoder scored).  A query is *ambiguous* when its top-30 candidates
  span at least 3 values of a taste facet (brands, k-means groups), else
  *specific*.  Each query has an *area*: the most common category (catalogs
  with categories) or group among its top 10.
- **Users** have 1–3 areas they shop in (85% of their queries; 15% anywhere)
  and a stable **taste**: a liked value of each facet the catalog has — one
  favourite brand per area (catalogs with brands; for titles-only catalogs
  20% of the k-means groups instead), and a price band (their band and,
  half the time, each neighbour).  ``taste(p)`` is the share of the
  product's facets the user likes (0..1).
- **Relevance** of a candidate is its non-personal engine score
  standardized over the query's candidates (``z``; the z-score mix of
  cross-encoder and first stages, not the learned ranker, so the benchmark
  does not grade the ranker by itself), saturating: ``3 σ(2 z)`` (the top
  candidates of a query are about equally relevant; the engine's score
  differences among near-identical products are not the user's).
- **Clicks** (before the cut): the simulated shop logs 10 of the engine's
  non-personalized top 30, best first with exploration (a Plackett-Luce
  draw on ``0.5 z``); the user examines position ``i`` (0-based) with
  probability ``1 / (1 + i)^0.6`` and clicks an examined product with
  probability ``σ(3 σ(2 z) − 2.5 + strength · 3 · (taste − 0.3))``; a click
  becomes an add-to-cart with probability ``0.25 + 0.25 taste`` (0.3
  without taste), and that a purchase half the time.  ``strength`` is 0
  (taste ``none``), 1 (``medium``) or 2 (``strong``).
- **Time**: ``--days`` simulated days, sessions spread uniformly; 25% of
  the users are *cold*: they arrive after the global time cut (the last
  ``--eval-days``) and have no history.
- **Training**: only sessions before the cut.  The ranker is trained exactly
  as `make finetune` trains it (:func:`finetune.ranker.train_ranker`, profiles
  and counts point-in-time); profiles for evaluation are those at the cut.
- **Evaluation** on sessions after the cut: the user's judgments are drawn
  from the same click model without position bias (each candidate examined
  with probability 0.5), so neither ranking is favoured by what it showed;
  sessions without a click are dropped.  NDCG@10 and MRR@10 of the
  personalized ranking (``personalize=1``) against the same ranker with
  ``personalize=0`` (the non-personal ranking), with 95% paired bootstrap
  intervals of the difference, for warm and cold users.
- **References** on the same sessions: *relevance* (the simulator's own
  relevance ``z`` alone), *Bayes* (:class:`HistoryPosterior`: the best
  ranking each user's training sessions support) and the *oracle* (true
  taste).  Bayes − relevance is the most any profile built from that much
  history can lift; ``--curve 30,60`` repeats the medium taste with more
  sessions per user, to show how the lift and that ceiling grow with history.

**Guard on real queries** (the config's judged ``eval.queries``): each
query gets a synthetic history of 5 sessions, each showing 10 products and
one of them clicked: (a) a product of the judged product's own group (the
judged product excluded), or (b) a random product; the 9 others shown are
random; MRR@10 with the medium-taste ranker (and, as ``guard_strong``, the
strong-taste one), personalized vs not.  The
same queries compare the config's own learned ranker (``rerank.ranker``,
no user) with the z-score mix on the same candidates.

Writes ``personal.json``, ``report.md`` and ``lift.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.profiles import ProfileSettings, bought_rows
from core import metrics
from core.bootstrap import paired_bootstrap

DAY = 86400.0
START = 1_767_225_600.0  # 2026-01-01
TASTES = {"none": 0.0, "medium": 1.0, "strong": 2.0}
EVENTS = ("impression", "click", "add_to_cart", "purchase")
EXAMINE = 1.0 / (1.0 + np.arange(10)) ** 0.6  # the chance a user looks at each of the 10 shown positions


@dataclass
class SimUser:
    uid: str
    areas: list[int]
    liked: dict[str, set[int]]  # facet -> liked codes
    cold: bool


@dataclass
class World:
    """The query pool with each query's candidates, relevance z, area and ambiguity, and the product facets."""

    queries: list[str]
    cands: dict
    z: dict[str, np.ndarray]
    shown: dict[str, np.ndarray]  # indices into the candidates of the non-personal top 30
    area: np.ndarray
    ambiguous: np.ndarray
    facets: dict[str, np.ndarray]  # taste facets: codes by product row
    n_values: dict[str, int]
    area_brands: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class SimLog:
    events: list = field(default_factory=list)  # core.formats.clicklog.Event
    sessions: list = field(default_factory=list)  # finetune.ranker.Session (training period)
    eval_sessions: list = field(default_factory=list)  # (user, query, t, gains {row: gain})


def build_world(engine, queries: list[str], progress: bool = True, cache_dir: Path | None = None) -> World:
    from engine.rerank import combine
    from finetune.ranker import candidate_cache

    cands = candidate_cache(engine, queries, progress=progress, cache_dir=cache_dir)
    queries = [q for q in queries if len(cands[q].rows) >= 10]
    fac = engine.facets()
    taste = {}
    if (fac.brand >= 0).mean() > 0.5:
        taste["brand"] = fac.brand
    if "brand" not in taste and (fac.group >= 0).all():  # titles only: groups stand in for brands
        taste["group"] = fac.group
    if (fac.price_band >= 0).mean() > 0.5:
        taste["price_band"] = fac.price_band
    area_codes = fac.category if (fac.category >= 0).mean() > 0.5 else fac.group
    r = engine.cfg.rerank
    z, shown, area, amb = {}, {}, [], []
    for q in queries:
        c = cands[q]
        s = combine(c.ce, c.first, r.weight)
        sd = s.std()
        z[q] = (s - s.mean()) / sd if sd > 0 else np.zeros(len(s))
        order = np.argsort(-s, kind="stable")
        shown[q] = order[:30]
        top_rows = c.rows[order[:10]]
        area.append(int(np.bincount(area_codes[top_rows] - area_codes.min()).argmax() + area_codes.min()))
        top30 = c.rows[order[:30]]
        amb.append(any(len(np.unique(codes[top30])) >= 3 for f, codes in taste.items() if f != "price_band"))
    n_values = {f: int(codes.max()) + 1 for f, codes in taste.items()}
    # the brands each area's products have (a user is loyal to one of them per area)
    area_brands = {}
    if "brand" in taste:
        for a in np.unique(area_codes):
            b = np.unique(fac.brand[(area_codes == a) & (fac.brand >= 0)])
            if len(b):
                area_brands[int(a)] = b
    return World(queries, cands, z, shown, np.asarray(area), np.asarray(amb), taste, n_values, area_brands)


def make_users(world: World, n_users: int, rng: np.random.Generator, cold_share: float = 0.25) -> list[SimUser]:
    areas, counts = np.unique(world.area, return_counts=True)
    p = counts / counts.sum()
    users = []
    for u in range(n_users):
        k = int(rng.integers(1, 4))
        ua = rng.choice(areas, size=min(k, len(areas)), replace=False, p=p).tolist()
        liked: dict[str, set[int]] = {}
        for f, n in world.n_values.items():
            if f == "price_band":
                c = int(rng.integers(0, n))
                liked[f] = {c} | {b for b in (c - 1, c + 1) if 0 <= b < n and rng.random() < 0.5}
            elif f == "brand" and world.area_brands:  # one favourite brand in every area
                liked[f] = {int(rng.choice(b)) for b in world.area_brands.values()}
            else:
                s = set(np.flatnonzero(rng.random(n) < 0.2).tolist())
                liked[f] = s or {int(rng.integers(0, n))}
        users.append(SimUser(f"sim{u:05d}", ua, liked, bool(rng.random() < cold_share)))
    return users


def taste_of(world: World, user: SimUser, rows: np.ndarray) -> np.ndarray:
    if not world.facets:
        return np.zeros(len(rows))
    t = np.zeros(len(rows))
    for f, codes in world.facets.items():
        t += np.isin(codes[rows], list(user.liked[f]))
    return t / len(world.facets)


def click_logit(z: np.ndarray, taste: np.ndarray, strength: float) -> np.ndarray:
    """Relevance saturates (``3 σ(2 z)``: the engine's top candidates of a query are all about equally
    relevant, its score differences among near-identical products are not the user's); taste adds
    ``strength · 3 · (taste − 0.3)``."""
    return 3.0 / (1.0 + np.exp(-2.0 * z)) - 2.5 + strength * 3.0 * (taste - 0.3)


def simulate(
    world: World,
    users: list[SimUser],
    strength: float,
    days: float,
    eval_days: float,
    sessions_per_user: float,
    rng: np.random.Generator,
    row_ids,
) -> tuple[SimLog, float]:
    """Sessions of every user over ``days``; returns the log and the global time cut."""
    from core.formats.clicklog import Event
    from finetune.ranker import Session

    cut = START + (days - eval_days) * DAY
    by_area: dict[int, list[int]] = {}
    for i, a in enumerate(world.area.tolist()):
        by_area.setdefault(a, []).append(i)
    log = SimLog()
    for user in users:
        n = max(1, int(rng.poisson(sessions_per_user)))
        lo = cut if user.cold else START
        times = np.sort(rng.uniform(lo, START + days * DAY, size=n))
        pool = [i for a in user.areas for i in by_area.get(a, [])]
        for t in times:
            qi = int(rng.choice(pool)) if pool and rng.random() < 0.85 else int(rng.integers(len(world.queries)))
            q = world.queries[qi]
            c = world.cands[q]
            taste = taste_of(world, user, c.rows)
            p_click = _sigmoid(click_logit(world.z[q], taste, strength))
            p_cart = 0.25 + 0.25 * taste if strength > 0 else np.full(len(taste), 0.3)
            if t >= cut:  # evaluation: judgments without position bias
                clicked = rng.random(len(c.rows)) < 0.5 * p_click
                gains = {}
                for j in np.flatnonzero(clicked):
                    g = 1.0
                    if rng.random() < p_cart[j]:
                        g = 3.0 if rng.random() < 0.5 else 2.0
                    gains[int(c.rows[j])] = g
                if gains:
                    log.eval_sessions.append((user.uid, q, float(t), gains))
                continue
            t = min(
                t, cut - 300.0
            )  # a session's events (shown over seconds, bought within minutes) stay before the cut
            sess = Session(user.uid, q, float(t))
            # the shop shows 10 of the top 30 non-personal candidates, best first with some exploration
            # (a Plackett-Luce draw on 1.5 z: Gumbel top-k), as logged ranking data usually has
            top = world.shown[q]
            keys = 0.5 * world.z[q][top] + rng.gumbel(size=len(top))
            for pos, j in enumerate(top[np.argsort(-keys)][:10]):
                row = int(c.rows[j])
                pid = row_ids[row]
                ts = float(t) + pos
                log.events.append(Event(user.uid, q, pid, "impression", ts))
                sess.shown.append(row)
                if rng.random() < EXAMINE[pos] * p_click[j]:
                    log.events.append(Event(user.uid, q, pid, "click", ts + 5))
                    g = 1.0
                    if rng.random() < p_cart[j]:
                        log.events.append(Event(user.uid, q, pid, "add_to_cart", ts + 30))
                        g = 2.0
                        if rng.random() < 0.5:
                            log.events.append(Event(user.uid, q, pid, "purchase", ts + 120))
                            g = 3.0
                    sess.gains[row] = max(sess.gains.get(row, 0.0), g)
            log.sessions.append(sess)
    log.events.sort(key=lambda e: e.timestamp)
    log.sessions.sort(key=lambda s: s.t)
    log.eval_sessions.sort(key=lambda s: s[2])
    return log, cut


class HistoryPosterior:
    """What a profile could know at best: the Bayes ranking from each user's training sessions.

    For every (user, facet value) the log-likelihood ratio of *liked* against *not liked* under the
    simulator's own click model, summed over the user's logged impressions (each at its position and
    relevance, clicked or not; the user's true taste on the other facets is given, so this is an upper
    estimate).  With the share of liked values as the prior, each candidate's posterior per facet gives its
    expected click probability; ranking by it is the best ranking that the training sessions support.
    It separates two gaps: oracle − Bayes is what no profile can know (values the user never saw, noise),
    Bayes − personal is what our features and ranker leave on the table."""

    def __init__(self, world: World, users: dict, sessions: list, strength: float):
        self.world, self.strength = world, strength
        self.facets = list(world.facets)
        n = len(self.facets)
        self.llr: dict[str, dict] = {f: {} for f in self.facets}
        self.prior = {}
        for f in self.facets:
            share = np.mean([len(u.liked[f]) / world.n_values[f] for u in users.values()]) if users else 0.5
            self.prior[f] = float(np.log(share / (1.0 - share))) if 0 < share < 1 else 0.0
        for s in sessions:
            c = self.world.cands[s.query]
            index = {int(r): i for i, r in enumerate(c.rows)}
            u = users[s.user]
            for pos, row in enumerate(s.shown[: len(EXAMINE)]):
                z = world.z[s.query][index[row]]
                clicked = row in s.gains
                for f in self.facets:
                    others = sum(int(world.facets[g][row]) in u.liked[g] for g in self.facets if g != f) / n
                    p1 = EXAMINE[pos] * _sigmoid(click_logit(z, others + 1.0 / n, strength))
                    p0 = EXAMINE[pos] * _sigmoid(click_logit(z, others, strength))
                    key = (s.user, int(world.facets[f][row]))
                    step = np.log(p1 / p0) if clicked else np.log((1.0 - p1) / (1.0 - p0))
                    self.llr[f][key] = self.llr[f].get(key, 0.0) + step

    def expected_clicks(self, uid: str, query: str) -> np.ndarray:
        c = self.world.cands[query]
        n = len(self.facets)
        post = [
            _sigmoid(
                self.prior[f] + np.array([self.llr[f].get((uid, int(k)), 0.0) for k in self.world.facets[f][c.rows]])
            )
            for f in self.facets
        ]
        out = np.zeros(len(c.rows))
        for combo in np.ndindex(*([2] * n)):  # every liked / not-liked combination of the facets
            w = np.ones(len(c.rows))
            for b, p in zip(combo, post):
                w = w * (p if b else 1.0 - p)
            out += w * _sigmoid(click_logit(self.world.z[query], sum(combo) / n, self.strength))
        return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def evaluate_sessions(
    engine,
    ranker,
    world: World,
    sessions: list,
    pit,
    profile_of,
    users: dict | None = None,
    strength: float = 0.0,
    bayes: HistoryPosterior | None = None,
) -> dict[str, np.ndarray]:
    """Per eval session: NDCG@10 and MRR@10, base (personalize=0) and personal (1), whether warm, and (given the
    simulated users) the oracle: the simulator's own click utility, true taste included (a ceiling), and
    ``relevance``: the simulator's relevance alone (no taste; the base the Bayes ranking adds its posterior to)."""
    from engine.features import feature_matrix, personal_features, timeline_ctr_popularity

    cfg = engine.cfg
    hl = cfg.personal.half_life_days * DAY
    row_of = engine.products.row_map()
    fac = engine.facets()
    runs_b, runs_p, runs_o, runs_r, runs_y, qrels, warm = {}, {}, {}, {}, {}, {}, []
    for i, (uid, q, t, gains) in enumerate(sessions):
        c = world.cands[q]
        prof = profile_of(uid)
        ctr, pop = timeline_ctr_popularity(pit.timeline, c.rows, t, cfg.personal.ctr_prior)
        personal = personal_features(c.rows, prof, fac, t, hl, bought_rows(prof, row_of)) if prof else None
        X = feature_matrix(c, ctr, pop, personal)
        full, base = ranker.score(X, 1.0, warm=prof is not None)
        sid = f"s{i}"
        runs_b[sid] = metrics.top_ids(c.rows, base)
        runs_p[sid] = metrics.top_ids(c.rows, full)
        if users is not None:
            util = click_logit(world.z[q], taste_of(world, users[uid], c.rows), strength)
            runs_o[sid] = metrics.top_ids(c.rows, util)
            runs_r[sid] = metrics.top_ids(c.rows, world.z[q])
        if bayes is not None:
            runs_y[sid] = metrics.top_ids(c.rows, bayes.expected_clicks(uid, q))
        qrels[sid] = {str(r): g for r, g in gains.items()}
        warm.append(prof is not None)
    out = {"warm": np.asarray(warm, dtype=bool)}
    for name, fn in (("ndcg@10", metrics.ndcg), ("mrr@10", metrics.mrr)):
        out[f"{name}/base"] = fn(qrels, runs_b, 10, per_query=True)
        out[f"{name}/personal"] = fn(qrels, runs_p, 10, per_query=True)
        if runs_o:
            out[f"{name}/oracle"] = fn(qrels, runs_o, 10, per_query=True)
            out[f"{name}/relevance"] = fn(qrels, runs_r, 10, per_query=True)
        if runs_y:
            out[f"{name}/bayes"] = fn(qrels, runs_y, 10, per_query=True)
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
            for ceiling in ("oracle", "bayes", "relevance"):
                if f"{m}/{ceiling}" in res:
                    block[m][ceiling] = (
                        round(float(res[f"{m}/{ceiling}"][sel].mean()), 4) if sel.any() else float("nan")
                    )
        out[group] = block
    return out


def run_taste(engine, world: World, taste: str, args, rng_seed: int, out_dir: Path, progress: bool):
    from engine.ranker import Ranker
    from finetune.ranker import EventArrays, PointInTime, train_ranker

    rng = np.random.default_rng(rng_seed)
    users = make_users(world, args.users, rng)
    row_ids = engine.products.ids
    log, cut = simulate(world, users, TASTES[taste], args.days, args.eval_days, args.sessions, rng, row_ids)
    row_of = engine.products.row_map()
    assert all(e.timestamp < cut for e in log.events) and all(s.t < cut for s in log.sessions)
    pit = PointInTime(
        EventArrays.from_events(log.events, row_of), engine.facets(), ProfileSettings.from_config(engine.cfg.personal)
    )
    tcfg = engine.cfg.finetune.ranker
    card = train_ranker(
        engine,
        log.sessions,
        pit,
        tcfg,
        out_dir / f"ranker-{taste}",
        cands=world.cands,
        progress=progress,
        description=f"simulated sessions before the cut, taste {taste}",
    )
    ranker = Ranker.load(out_dir / f"ranker-{taste}")
    profiles = pit.profiles_at(cut)
    profile_of = lambda uid: p if (p := profiles.get(uid)) is not None and p.weight > 0 else None  # noqa: E731
    by_uid = {u.uid: u for u in users}
    bayes = HistoryPosterior(world, by_uid, log.sessions, TASTES[taste])
    res = evaluate_sessions(engine, ranker, world, log.eval_sessions, pit, profile_of, by_uid, TASTES[taste], bayes)
    summary = summarize(res, log.eval_sessions, args.seed)
    per_user = np.unique([s.user for s in log.sessions], return_counts=True)[1]
    summary["train"] = {
        "events": len(log.events),
        "sessions": len(log.sessions),
        "ranker_sessions": card["sessions"],
        "history_sessions_per_warm_user": round(float(per_user.mean()), 1) if len(per_user) else 0.0,
        "cut": cut,
        "importance_gain": card["importance_gain"],
        "ambiguous_queries": int(world.ambiguous.sum()),
        "queries": len(world.queries),
    }
    return summary, ranker


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
    from engine.profiles import Profile, apply_event
    from core.formats.judged import read_queries
    from finetune.ranker import candidate_cache

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
                for j, o in enumerate([int(r)] + rng.integers(0, len(groups), size=9).tolist()):
                    apply_event(prof, fac, o, engine.products.ids[o], "impression", ts + j, settings)
                apply_event(prof, fac, int(r), engine.products.ids[int(r)], "click", ts + 20, settings)
            prof = prof if prof.weight > 0 else None
            personal = personal_features(c.rows, prof, fac, t, hl) if prof else None
            X = feature_matrix(c, np.zeros(len(c.rows)), np.zeros(len(c.rows)), personal)
            full, _ = ranker.score(X, 1.0, warm=prof is not None)
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


def write_report(out: Path, payload: dict, context: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "personal.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    lines = [
        f"# Personalization benchmark: {context['config']}",
        "",
        "**The users are simulated** (see `eval/sim/personal.py` for the behaviour model): stable tastes over "
        + ", ".join(context["facets"])
        + "; position-biased clicks on 10 of the engine's non-personal top 30 (Plackett-Luce draw) before "
        "the time cut; judgments after it drawn from the same click model without position bias. "
        "Personal = the ranker with `personalize=1` and the user's profile at the cut; base = the same ranker "
        "with `personalize=0`. Differences are personal − base with 95% paired bootstrap intervals over sessions. "
        "Oracle: the simulator's own click utility with the user's true taste (a ceiling no profile reaches).",
        "",
        *[f"- {k}: {v}" for k, v in context.items()],
        "",
        "Bayes: the best ranking the user's training sessions support — the simulator's own click model "
        "(positions, relevance, taste strength) turned into a posterior per facet value from each user's "
        "logged impressions and clicks, candidates ranked by expected click (an upper estimate: the other "
        "facets' true taste is given). Oracle − Bayes is what no profile can know from the history; "
        "Bayes − personal is what the features and ranker leave.",
        "",
        "Relevance: the simulator's relevance alone (no taste), the ranking the Bayes posterior is added to; "
        "Bayes − relevance is the most a profile built from this much history can lift NDCG@10.",
        "",
        "| taste | users | group | sessions | NDCG@10 base | NDCG@10 personal | diff [95% CI] | relevance | Bayes "
        "| oracle | MRR@10 base | MRR@10 personal | diff [95% CI] |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for taste in TASTES:
        if taste not in payload:
            continue
        for group in ("warm", "cold"):
            b = payload[taste][group]
            n, m = b["ndcg@10"], b["mrr@10"]
            lines.append(
                f"| {taste} | {b['n_users']} | {group} | {b['n_queries']} | {n['base']:.4f} | "
                f"{n['personal']:.4f} | {n['diff']:+.4f} [{n['ci_low']:+.4f}, {n['ci_high']:+.4f}] | "
                f"{n.get('relevance', float('nan')):.4f} | {n.get('bayes', float('nan')):.4f} | "
                f"{n.get('oracle', float('nan')):.4f} | "
                f"{m['base']:.4f} | {m['personal']:.4f} | {m['diff']:+.4f} [{m['ci_low']:+.4f}, "
                f"{m['ci_high']:+.4f}] |"
            )
    if payload.get("curve"):
        lines += [
            "",
            "## Lift by length of history (medium taste, warm users)",
            "",
            "The same simulation with more sessions per user: what the profile and ranker gain as history "
            "grows, against the most that history supports (Bayes − relevance).",
            "",
            "| sessions per user | training sessions per warm user | NDCG@10 diff [95% CI] | Bayes − relevance "
            "| share of it reached |",
            "| ---: | ---: | --- | ---: | ---: |",
        ]
        for row in payload["curve"]:
            n = row["warm"]["ndcg@10"]
            room = n["bayes"] - n["relevance"]
            share = f"{n['diff'] / room:.0%}" if room > 0 else "–"
            lines.append(
                f"| {row['sessions']:g} | {row['history_sessions_per_warm_user']:g} | {n['diff']:+.4f} "
                f"[{n['ci_low']:+.4f}, {n['ci_high']:+.4f}] | {room:+.4f} | {share} |"
            )
    for key, taste in (("guard", "medium"), ("guard_strong", "strong")):
        if key not in payload:
            continue
        lines += [
            "",
            f"## Guard on real dev queries (synthetic histories, {taste}-taste ranker)",
            "",
            "| history | queries | MRR@10 base | MRR@10 personal | diff [95% CI] |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for name, g in payload[key].items():
            m = g["mrr@10"]
            lines.append(
                f"| {name} | {g['n_queries']} | {m['base']:.4f} | {m['personal']:.4f} | {m['diff']:+.4f} "
                f"[{m['ci_low']:+.4f}, {m['ci_high']:+.4f}] |"
            )
    if "ranker_vs_mix" in payload:
        b = payload["ranker_vs_mix"]
        lines += [
            "",
            f"## The config's learned ranker against the z-score mix (no users, {b['n_queries']} dev queries)",
            "",
            "| metric | z-score mix | ranker | diff [95% CI] | p |",
            "| --- | ---: | ---: | --- | ---: |",
        ]
        for m in ("mrr@10", "ndcg@10"):
            v = b[m]
            lines.append(
                f"| {m} | {v['zscore_mix']:.4f} | {v['ranker']:.4f} | {v['diff']:+.4f} "
                f"[{v['ci_low']:+.4f}, {v['ci_high']:+.4f}] | {v['p_value']:.3f} |"
            )
    if _plot(out / "lift.png", payload):
        lines += ["", "![NDCG@10 lift by taste strength](lift.png)"]
    for taste in TASTES:
        if taste in payload:
            imp = payload[taste]["train"]["importance_gain"]
            top = sorted(imp.items(), key=lambda kv: -kv[1])[:6]
            lines += [
                "",
                f"Ranker ({taste}): {payload[taste]['train']['ranker_sessions']} training sessions; "
                "top features by gain: " + ", ".join(f"{k} {v:.0f}" for k, v in top),
            ]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _plot(path: Path, payload: dict) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tastes = [t for t in TASTES if t in payload]
    if not tastes:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for off, group, color in ((-0.15, "warm", "tab:blue"), (0.15, "cold", "tab:gray")):
        d = [payload[t][group]["ndcg@10"] for t in tastes]
        x = np.arange(len(tastes)) + off
        ax.bar(x, [v["diff"] for v in d], width=0.3, color=color, label=f"{group} users")
        ax.errorbar(
            x,
            [v["diff"] for v in d],
            yerr=[[v["diff"] - v["ci_low"] for v in d], [v["ci_high"] - v["diff"] for v in d]],
            fmt="none",
            ecolor="k",
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(tastes)), tastes)
    ax.set_xlabel("taste strength (simulated users)")
    ax.set_ylabel("NDCG@10 personal − base")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def query_pool(cfg, n: int, seed: int) -> list[str]:
    """A seeded sample of the config's training queries (click log before the cut, or judged pairs)."""
    from finetune.inputs import is_clicklog

    ft = cfg.finetune
    if ft.train is None or not Path(ft.train).is_file():
        raise FileNotFoundError(f"{cfg.source}: finetune.train ({ft.train}) is needed for the query pool")
    if is_clicklog(Path(ft.train), ft.format):
        from core.formats.clicklog import read_clicklog
        from finetune.inputs import clicklog_cut

        events = read_clicklog(ft.train)
        cut, _ = clicklog_cut(cfg, events)
        texts = sorted({e.query.strip() for e in events if e.timestamp < cut})
    else:
        from core.formats.judged import read_queries

        texts = sorted(set(read_queries(ft.train).texts.values()))
    rng = np.random.default_rng(seed)
    return [texts[i] for i in sorted(rng.choice(len(texts), size=min(n, len(texts)), replace=False))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m eval.sim.personal", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tastes", default="none,medium,strong")
    ap.add_argument("--queries", type=int, default=600, help="size of the query pool (training queries)")
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--sessions", type=float, default=15.0, help="mean sessions per user")
    ap.add_argument(
        "--curve",
        default="",
        help="comma-separated sessions per user: the medium-taste lift at each (a learning curve; empty: none)",
    )
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--eval-days", type=float, default=15.0)
    ap.add_argument(
        "--guard",
        default=None,
        help="judged queries for the guard and the ranker-vs-mix comparison "
        "(default: the config's eval.queries; 'none' skips them)",
    )
    ap.add_argument("--guard-limit", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from engine.search import SearchEngine
    from indexer.build import ensure_indexes
    from indexer.config import load_config, parse_overrides

    t0 = time.perf_counter()
    progress = not args.no_progress
    cfg = load_config(args.config, **parse_overrides(args.set))
    # the simulation needs the cross-encoder's candidates; the learned ranker is what it trains
    shipped_ranker = cfg.rerank.ranker
    cfg = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=None))
    ensure_indexes(cfg, ["dense"], progress=progress)
    engine = SearchEngine.from_config(cfg)
    out = Path(args.out)
    cache = (cfg.finetune.out_dir or cfg.root / "models" / cfg.name) / "cache"
    world = build_world(engine, query_pool(cfg, args.queries, args.seed), progress, cache_dir=cache)
    payload: dict = {}
    rankers = {}
    for i, taste in enumerate(t for t in args.tastes.split(",") if t):
        if taste not in TASTES:
            print(f"error: unknown taste {taste!r}; use {', '.join(TASTES)}", file=sys.stderr)
            return 2
        payload[taste], rankers[taste] = run_taste(engine, world, taste, args, args.seed + 1, out, progress)
        w = payload[taste]["warm"]["ndcg@10"]
        print(
            f"{taste}: warm NDCG@10 {w['base']:.4f} -> {w['personal']:.4f} ({w['diff']:+.4f} "
            f"[{w['ci_low']:+.4f}, {w['ci_high']:+.4f}]); cold diff {payload[taste]['cold']['ndcg@10']['diff']:+.4f}"
        )
    curve = []
    for n_sessions in (float(x) for x in args.curve.split(",") if x.strip()):
        run_args = argparse.Namespace(**{**vars(args), "sessions": n_sessions})
        res, _ = run_taste(engine, world, "medium", run_args, args.seed + 1, out / f"curve-{n_sessions:g}", progress)
        curve.append(
            {
                "sessions": n_sessions,
                "warm": res["warm"],
                "history_sessions_per_warm_user": res["train"]["history_sessions_per_warm_user"],
            }
        )
        w = res["warm"]["ndcg@10"]
        print(
            f"medium, {n_sessions:g} sessions per user: warm NDCG@10 {w['diff']:+.4f} "
            f"[{w['ci_low']:+.4f}, {w['ci_high']:+.4f}], Bayes − relevance {w['bayes'] - w['relevance']:+.4f}"
        )
    if curve:
        payload["curve"] = curve
    guard_path = args.guard
    if guard_path is None:
        guard_path = cfg.eval.queries
    if guard_path and guard_path != "none" and "medium" in rankers:
        from engine.ranker import Ranker

        shipped = None
        if shipped_ranker:
            p = Path(shipped_ranker)
            p = p if p.is_absolute() else cfg.root / p
            shipped = Ranker.load(p) if (p / "model.txt").is_file() else None
        g = guard(
            engine,
            rankers["medium"],
            Path(guard_path),
            5,
            args.seed,
            progress,
            args.guard_limit,
            cache_dir=cache,
            shipped=shipped,
        )
        if "ranker_vs_mix" in g:
            payload["ranker_vs_mix"] = g.pop("ranker_vs_mix")
            m = payload["ranker_vs_mix"]["mrr@10"]
            print(f"{shipped_ranker} vs z-score mix on {guard_path}: MRR@10 {m['zscore_mix']:.4f} -> {m['ranker']:.4f}")
        payload["guard"] = g
        if "strong" in rankers and rankers["strong"].uses_personal:  # the same histories, the strong-taste ranker
            payload["guard_strong"] = guard(
                engine, rankers["strong"], Path(guard_path), 5, args.seed, progress, args.guard_limit, cache_dir=cache
            )
        for key in ("guard", "guard_strong"):
            for name, g in payload.get(key, {}).items():
                print(
                    f"{key} {name}: MRR@10 {g['mrr@10']['base']:.4f} -> {g['mrr@10']['personal']:.4f} "
                    f"({g['mrr@10']['diff']:+.4f})"
                )
    context = {
        "config": str(args.config),
        "facets": list(world.facets),
        "query pool": f"{len(world.queries)} training queries ({int(world.ambiguous.sum())} ambiguous)",
        "users": args.users,
        "mean sessions per user": args.sessions,
        "days": f"{args.days:g} (last {args.eval_days:g} evaluate)",
        "cross-encoder": cfg.rerank.model,
        "seed": args.seed,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }
    payload["context"] = context
    write_report(out, payload, context)
    print(f"wrote {out}/personal.json, report.md, lift.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
