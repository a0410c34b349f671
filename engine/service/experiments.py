"""The service's side of an online experiment (``serve.interleave``): which searches take part, the page they
get, and ``GET /experiments`` (what the logged impressions and clicks say so far).

A first-page search takes part with probability ``share`` (team-draft) or when its shopper falls in the
candidate's ``share`` (A/B: by user, by search when anonymous).  Team-draft asks the engine for both rankers'
pages (the second one reuses the cached candidate sets: only the final ranking runs again) and interleaves them
(:func:`engine.experiments.team_draft`); the impression's ``arm`` records each shown product's team, so a click
sent with the ``search_id`` is credited to the ranker that placed the product.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets

import numpy as np

from engine.experiments import CANDIDATE, ab_arm, experiment_stats, team_draft

log = logging.getLogger("ecomsearch.service")


EXPLORE = "explore"  # the arm of a search shown in a random order (serve.explore)


class Experiment:
    """One service's experiment between the serving ranker and ``serve.interleave.candidate``, and the
    exploration share (``serve.explore``): first-page searches outside the experiment shown in a random order,
    logged with the arm ``explore``, so that the click model of `make retrain` sees products at many ranks."""

    def __init__(self, cfg, explore: float = 0.0):
        self.cfg = cfg
        self.explore = float(explore)
        self.rng = np.random.default_rng(secrets.randbits(64))

    @property
    def on(self) -> bool:
        return bool(self.cfg.candidate)

    def search(self, engine, user: str | None, query_args: dict):
        """The result of one search and its arm (None: the plain page).  A candidate that cannot be loaded (a
        missing or broken folder) ends nothing: the search gets the serving page, logged."""
        if query_args.get("offset", 0) != 0:
            return engine.query(**query_args), None
        if not self.on:
            return self._explored(engine.query(**query_args))
        try:
            engine.version.models.candidate()
        except Exception:
            log.exception(
                "the experiment's candidate ranker %s cannot be loaded; serving without it", self.cfg.candidate
            )
            return engine.query(**query_args), None
        return self._search(engine, user, query_args)

    def _search(self, engine, user: str | None, query_args: dict):
        c = self.cfg
        if c.mode == "ab":
            side = ab_arm(user if user is not None else secrets.token_hex(8), c.share, salt=str(c.candidate))
            variant = "candidate" if side == CANDIDATE else None
            return engine.query(**query_args, variant=variant), f"ab:{side}"
        if self.rng.random() >= c.share:
            return self._explored(engine.query(**query_args))
        a = engine.query(**query_args)
        b = engine.query(**query_args, variant="candidate")
        page, teams = team_draft([h.product_id for h in a.hits], [h.product_id for h in b.hits], len(a.hits), self.rng)
        by_id = {h.product_id: h for h in b.hits} | {h.product_id: h for h in a.hits}
        hits = [dataclasses.replace(by_id[p], rank=i + 1) for i, p in enumerate(page)]
        return dataclasses.replace(a, hits=hits), f"td:{teams}"

    def _explored(self, res):
        """``res`` as it is, or, for a share ``explore`` of searches, its hits in a random order (ranks renumbered)."""
        if self.explore <= 0 or len(res.hits) < 2 or self.rng.random() >= self.explore:
            return res, None
        order = self.rng.permutation(len(res.hits))
        hits = [dataclasses.replace(res.hits[j], rank=res.offset + i + 1) for i, j in enumerate(order)]
        return dataclasses.replace(res, hits=hits), EXPLORE


def experiment_report(events, since: float) -> dict:
    """:func:`engine.experiments.experiment_stats` over the experiment searches logged since ``since``."""
    rows = events.store.experiment_rows(since)
    by_search: dict[str, tuple[str, list[int]]] = {}
    for sid, arm, rank in rows:
        got = by_search.setdefault(sid, (arm, []))
        if rank is not None:
            got[1].append(int(rank))
    return experiment_stats(list(by_search.values()))
