"""The quality guard of a recommendation build: does a build from these events beat popularity on recent days?

Before :mod:`finetune.recs` swaps a new build in, the same recipe is built from the events before the last
``recs.guard_days`` (a quarter of the span where the events span less than twice that) and scored on the
events after that cut, every target ranked against the whole catalog as `make eval-recs` does:

- **for_you**: each shopper with history before the cut, the first product they engage with after it, given
  their engagements before it;
- **similar**: two products clicked one after the other within ``recs.visit_minutes`` after the cut, the second
  given the first.

Both against popularity (gain-weighted engagements before the cut), HR@10 paired case by case.  The build
passes when ours is ahead of popularity on the pooled cases — with the paired 95% interval above 0 once there
are at least 4 × ``recs.guard_min_cases`` of them (a young shop's thin evidence is not held against a build that
is ahead); with fewer than ``recs.guard_min_cases`` held-out cases it passes unjudged (and says so).  A store
whose events lost their order or their shoppers (a broken import, shuffled ids) fails, and the serving models
stay.
"""

from __future__ import annotations

import numpy as np

from core.bootstrap import paired_bootstrap
from core.config import RecsConfig
from engine.recs import GAINS
from finetune.recs_build import built_recommender

K = 10


def _cut(ts: np.ndarray, days: float) -> float:
    span = float(ts.max() - ts.min()) if len(ts) else 0.0
    held = days * 86400.0 if span >= 2 * days * 86400.0 else span / 4
    return float(ts.max()) - held


def held_out_cases(users, rows, events, ts, cut: float, visit_seconds: float):
    """(for_you cases [(user, target row)], similar cases [(seed row, target row)]) after ``cut``."""
    before = {u for u, t, e in zip(users, ts, events) if t < cut and e in GAINS}
    order = np.argsort(np.asarray(ts, dtype=np.float64), kind="stable")
    first: dict = {}
    last_click: dict = {}
    similar = []
    for i in order:
        u, r, e, t = users[i], int(rows[i]), events[i], float(ts[i])
        if t < cut or e not in GAINS:
            continue
        if u in before and u not in first:
            first[u] = r
        if e == "click":
            prev = last_click.get(u)
            if prev is not None and prev[0] != r and t - prev[1] <= visit_seconds:
                similar.append((prev[0], r))
            last_click[u] = (r, t)
    return list(first.items()), similar


def check(engine, src: tuple, s: RecsConfig) -> dict:
    """The guard's verdict on building ``src`` (users, rows, events, times) with ``s``: ``passed``, ``reason``
    and the measurements."""
    from engine.events.history import make_history

    users, rows, events, ts = src
    ts_a = np.asarray(ts, dtype=np.float64)
    if not len(ts_a):
        return {"passed": True, "reason": "no events: nothing to judge"}
    cut = _cut(ts_a, s.guard_days)
    for_you, similar = held_out_cases(users, rows, events, ts_a, cut, s.visit_minutes * 60.0)
    out: dict = {"cut": cut, "for_you_cases": len(for_you), "similar_cases": len(similar)}
    rng = np.random.default_rng(0)  # a large store: a seeded sample of each task's cases bounds the time
    for_you, similar = (
        [c[i] for i in np.sort(rng.permutation(len(c))[: s.guard_max_cases])] for c in (for_you, similar)
    )
    n_cases = len(for_you) + len(similar)
    out["scored_cases"] = n_cases
    if n_cases < s.guard_min_cases:
        return {**out, "passed": True, "reason": f"{n_cases} held-out cases < {s.guard_min_cases}: not judged"}
    keep = np.flatnonzero(ts_a < cut)
    part = [[col[i] for i in keep] for col in (users, rows, events, ts)]
    n = len(engine.products)
    rec, _, _ = built_recommender(engine, part, s, cut)
    weights = np.array([GAINS.get(e, 0.0) for e in part[2]])
    counts = np.bincount(np.asarray(part[1], dtype=np.int64), weights=weights, minlength=n)
    popular = np.argsort(-counts, kind="stable")[: K + 1]
    mask = engine.version.with_live(np.ones(n, dtype=bool))
    history: dict = {}
    for u, r, e, t in zip(*part):
        if e in GAINS:
            history.setdefault(u, []).append((int(r), e, float(t)))
    ours, pop = [], []
    for u, target in for_you:
        h = sorted(history[u], key=lambda x: -x[2])[: s.history_events]
        hist = make_history([x[0] for x in h], [x[1] for x in h], [x[2] for x in h], [None] * len(h), [], 0)
        scores, _, _ = rec.for_history(hist, None, mask, None, now=cut)
        ours.append(target in rec.top(scores, mask, K))
        pop.append(target in popular[:K])
    for seed, target in similar:
        scores, _, _ = rec.similar(seed, mask)
        ours.append(target in rec.top(scores, mask, K, exclude=seed))
        pop.append(target in popular[popular != seed][:K])
    d = paired_bootstrap(np.array(pop, dtype=float), np.array(ours, dtype=float))
    out.update(hr_ours=round(d["personal"], 4), hr_popularity=round(d["base"], 4))
    out.update(diff=round(d["diff"], 4), ci=[round(d["ci_low"], 4), round(d["ci_high"], 4)])
    passed = d["diff"] > 0 and (d["ci_low"] > 0 or n_cases < 4 * s.guard_min_cases)
    reason = (
        f"HR@10 {d['personal']:.4f} against popularity's {d['base']:.4f} on {n_cases} held-out cases "
        f"(difference {d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}])"
    )
    return {**out, "passed": bool(passed), "reason": reason if passed else f"not ahead of popularity: {reason}"}
