"""Simulated shoppers for the personalization benchmark (:mod:`eval.sim.personal`): the world (a query pool with
each query's candidates, their relevance and the products' taste facets), users with stable tastes, their
position-biased sessions before a time cut and judgments after it, and the Bayes posterior of a user's taste from
their history (the ceiling a profile can reach).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


DAY = 86400.0
START = 1_767_225_600.0  # 2026-01-01
TASTES = {"none": 0.0, "medium": 1.0, "strong": 2.0}
EVENTS = ("impression", "click", "add_to_cart", "purchase")
# seconds after its impression each event of a shown product is logged (the product at position p is shown p
# seconds into its session)
LAG = {"impression": 0.0, "click": 5.0, "add_to_cart": 30.0, "purchase": 120.0}
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
    sessions: list = field(default_factory=list)  # finetune.ranker_sessions.Session (training period)
    eval_sessions: list = field(default_factory=list)  # (user, query, t, gains {row: gain})


def build_world(engine, queries: list[str], progress: bool = True, cache_dir: Path | None = None) -> World:
    from engine.rerank import combine
    from finetune.ranker_sessions import candidate_cache

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
        z[q] = standardized(s)
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


def standardized(s: np.ndarray) -> np.ndarray:
    """A query's scores as z-scores over its candidates (all 0 when they are all equal)."""
    sd = s.std()
    return (s - s.mean()) / sd if sd > 0 else np.zeros(len(s))


def shop_order(world: World, query: str, rng: np.random.Generator) -> np.ndarray:
    """The 10 candidates (indices) the simulated shop shows for ``query``, in order: a Plackett-Luce draw on
    ``0.5 z`` from its non-personal top 30 (Gumbel top-k)."""
    top = world.shown[query]
    keys = 0.5 * world.z[query][top] + rng.gumbel(size=len(top))
    return top[np.argsort(-keys)][: len(EXAMINE)]


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
    from finetune.ranker_sessions import Session

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
            # the shop shows 10 of the top 30 non-personal candidates, best first with some exploration, as
            # logged ranking data usually has
            for pos, j in enumerate(shop_order(world, q, rng)):
                row = int(c.rows[j])
                pid = row_ids[row]
                ts = float(t) + pos
                log.events.append(Event(user.uid, q, pid, "impression", ts))
                sess.shown.append(row)
                if rng.random() < EXAMINE[pos] * p_click[j]:
                    log.events.append(Event(user.uid, q, pid, "click", ts + LAG["click"]))
                    g = 1.0
                    if rng.random() < p_cart[j]:
                        log.events.append(Event(user.uid, q, pid, "add_to_cart", ts + LAG["add_to_cart"]))
                        g = 2.0
                        if rng.random() < 0.5:
                            log.events.append(Event(user.uid, q, pid, "purchase", ts + LAG["purchase"]))
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
    relevance, clicked or not).  The other facets of each impression enter through their own posterior
    (mean field: the ratios of all facets are updated in turn from each other's current posteriors until they
    settle, ``rounds``), so the posterior uses the history alone.  ``given_others=True`` instead gives each
    impression the user's true taste on the other facets (an upper estimate, the earlier reference).  With the
    share of liked values as the prior, each candidate's posterior per facet gives its expected click
    probability; ranking by it is the best ranking that the training sessions support.  It separates two
    gaps: oracle − Bayes is what no profile can know (values the user never saw, noise), Bayes − personal is
    what our features and ranker leave on the table."""

    def __init__(
        self, world: World, users: dict, sessions: list, strength: float, given_others: bool = False, rounds: int = 6
    ):
        self.world, self.strength = world, strength
        self.facets = list(world.facets)
        self.prior = {}
        for f in self.facets:
            share = np.mean([len(u.liked[f]) / world.n_values[f] for u in users.values()]) if users else 0.5
            self.prior[f] = float(np.log(share / (1.0 - share))) if 0 < share < 1 else 0.0
        uids, pos, z, clicked, rows = [], [], [], [], []
        for s in sessions:
            c = world.cands[s.query]
            index = {int(r): i for i, r in enumerate(c.rows)}
            for p, row in enumerate(s.shown[: len(EXAMINE)]):
                uids.append(s.user)
                pos.append(p)
                z.append(world.z[s.query][index[row]])
                clicked.append(row in s.gains)
                rows.append(row)
        self.users = sorted(users)
        uix = {u: i for i, u in enumerate(self.users)}
        u = np.array([uix[x] for x in uids], dtype=np.int64)
        rows_a = np.array(rows, dtype=np.int64)
        theta = EXAMINE[np.array(pos, dtype=np.int64)] if pos else np.zeros(0)
        z_a, clicked_a = np.array(z, dtype=np.float64), np.array(clicked, dtype=bool)
        keys, inverse = {}, {}
        for f in self.facets:
            k = u * (world.n_values[f] + 1) + world.facets[f][rows_a]
            keys[f], inverse[f] = np.unique(k, return_inverse=True)
        liked = {
            f: np.array([int(world.facets[f][r]) in users[self.users[i]].liked[f] for i, r in zip(u, rows_a)], bool)
            for f in self.facets
        }
        n = len(self.facets)
        llr = {f: np.zeros(len(keys[f])) for f in self.facets}
        for _ in range(1 if given_others or n == 1 else rounds):
            q = {f: _sigmoid(self.prior[f] + llr[f][inverse[f]]) for f in self.facets}
            for f in self.facets:
                # the distribution of how many other facets of the impression the user likes
                dist = np.ones((len(u), 1))
                for g in self.facets:
                    if g == f:
                        continue
                    pg = liked[g].astype(np.float64) if given_others else q[g]
                    nxt = np.zeros((len(u), dist.shape[1] + 1))
                    nxt[:, :-1] += dist * (1.0 - pg)[:, None]
                    nxt[:, 1:] += dist * pg[:, None]
                    dist = nxt
                counts = np.arange(dist.shape[1])
                p1 = theta * (dist * _sigmoid(click_logit(z_a[:, None], (counts + 1.0) / n, strength))).sum(1)
                p0 = theta * (dist * _sigmoid(click_logit(z_a[:, None], counts / n, strength))).sum(1)
                step = np.where(clicked_a, np.log(p1 / p0), np.log((1.0 - p1) / (1.0 - p0)))
                llr[f] = np.bincount(inverse[f], weights=step, minlength=len(keys[f]))
        self.uix, self.keys, self.llr = uix, keys, llr

    def log_ratio(self, f: str, uid: str, codes: np.ndarray) -> np.ndarray:
        """The summed log-likelihood ratio (liked vs not) of each facet value ``codes`` for user ``uid``."""
        i = self.uix.get(uid)
        if i is None or not len(self.keys[f]):
            return np.zeros(len(codes))
        k = i * (self.world.n_values[f] + 1) + codes
        pos = np.clip(np.searchsorted(self.keys[f], k), 0, len(self.keys[f]) - 1)
        return np.where(self.keys[f][pos] == k, self.llr[f][pos], 0.0)

    def expected_clicks(self, uid: str, query: str) -> np.ndarray:
        c = self.world.cands[query]
        n = len(self.facets)
        post = [_sigmoid(self.prior[f] + self.log_ratio(f, uid, self.world.facets[f][c.rows])) for f in self.facets]
        out = np.zeros(len(c.rows))
        for combo in np.ndindex(*([2] * n)):  # every liked / not-liked combination of the facets
            w = np.ones(len(c.rows))
            for b, p in zip(combo, post):
                w = w * (p if b else 1.0 - p)
            out += w * _sigmoid(click_logit(self.world.z[query], sum(combo) / n, self.strength))
        return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))
