"""The simulated shop's log as the engine would have logged it: each impression and click carrying the relevance
the engine found in the product when it served the search (the taste model's click log-odds ``r(g)`` of the
non-personal ranker score, point in time) — what the service writes into every impression it logs, and what a
profile's taste evidence counts beside the rank (:mod:`engine.taste_counts`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from eval.sim.shoppers import LAG

# the events that carry the relevance served with the impression, and how long after it the simulator logs them
AFTER = {e: LAG[e] for e in ("impression", "click")}


def served_relevance(engine, ranker, world, log, pit) -> list:
    """``log.events`` with each impression and click of a logged session carrying its product's relevance as
    ``ranker`` (with a taste model) scores it at the session's time; ``pit``: the log's point-in-time counts."""
    from engine.features import feature_matrix, timeline_ctr_popularity

    taste = ranker.taste
    prior = engine.cfg.personal.ctr_prior
    ids = engine.products.ids
    x_of: dict[tuple, float] = {}
    for s in log.sessions:
        c = world.cands[s.query]
        ctr, pop = timeline_ctr_popularity(pit.timeline, c.rows, s.t, prior)
        x = taste.relevance_logit(ranker.score(feature_matrix(c, ctr, pop, None), 0.0, warm=False)[1])
        at = {int(r): j for j, r in enumerate(c.rows)}
        for pos, row in enumerate(s.shown):
            x_of[s.user, ids[row], round(s.t + pos, 3)] = float(x[at[int(row)]])
    out = []
    for e in log.events:
        lag = AFTER.get(e.event)
        x = x_of.get((e.user_id, e.product_id, round(e.timestamp - lag, 3))) if lag is not None else None
        out.append(dataclasses.replace(e, relevance=x) if x is not None else e)
    return out


def share_logged(events) -> float:
    """The share of impressions and clicks that carry a relevance."""
    n = [e.relevance is not None for e in events if e.event in AFTER]
    return float(np.mean(n)) if n else 0.0
