"""The ``recs:`` section: recommendations beside search (engine.recommend serves them, finetune.recs builds them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.config.loader import ConfigError

# each part's weight where a config's mapping does not name it (docs/recommendations.md)
FOR_YOU_WEIGHTS = {"als": 1.0, "neighbours": 0.5, "searches": 0.5, "profile": 0.2, "again": 1.0, "taste": 0.5}
TOGETHER_WEIGHTS = {"together": 1.0, "als": 1.0, "category": 1.0}


@dataclass
class RecsConfig:
    """Recommendations: similar, bought together, for you, trending (docs/recommendations.md)."""

    # the built models (`make finetune` / `make retrain` write them; default models/<config name>/recs; where
    # none are built, behaviour-free fallbacks only)
    models: Path | None = None
    # -- building (finetune.recs) --
    visit_minutes: float = 30.0  # one user's engagements with gaps under this are one visit (similar)
    basket_days: float = 7.0  # one user's carts and purchases with gaps under this are one basket (together)
    min_support: int = 1  # baskets a pair must share to count as bought together (scores are damped by shrink)
    shrink: float = 5.0  # evidence shrinkage of co-occurrence scores (pairs seen rarely count less)
    neighbours: int = 50  # kept per product
    factors: int = 64  # ALS dimensions (implicit)
    iterations: int = 15
    regularization: float = 0.05
    build_half_life_days: float = 90.0  # ALS confidences decay with this half-life
    # the quality guard (finetune.recs_guard): the recipe built without the last guard_days must beat
    # popularity on them (HR@10, paired interval above 0) before a build replaces the serving one; fewer
    # held-out cases than guard_min_cases: not judged; at most guard_max_cases per task (a seeded sample)
    guard_days: float = 7.0
    guard_min_cases: int = 50
    guard_max_cases: int = 2000
    # -- serving (engine.recommend) --
    # bought together needs this many baskets with two or more products in the build (Algolia asks for
    # 1,000 conversions in 30 days); below it, and for a product without its own pairs, it falls back
    min_baskets: int = 100
    trending_half_life_hours: float = 72.0  # decay of the trending counts
    trending_days: float = 14.0  # how far back trending reads the event store when it (re)loads
    trending_refresh_seconds: float = 60.0  # re-read the store this often (events other processes record)
    history_events: int = 50  # a user's most recent engagements for_you reads
    history_searches: int = 5  # and their most recent searches (one BM25 query each)
    history_half_life_hours: float = 72.0  # how fast a for_you seed's weight fades
    # how each kind mixes its parts (each normalized to a maximum of 1; docs/recommendations.md)
    # bought together: a near-duplicate of the product (its title's BM25 match at least duplicate_share of the
    # product's own) counts substitute_factor as much: complements before the same item in another colour
    substitute_factor: float = 0.3
    duplicate_share: float = 0.6
    # how each kind mixes its parts; a part a config does not name keeps its default weight
    for_you_weights: dict[str, float] = field(default_factory=lambda: dict(FOR_YOU_WEIGHTS))
    # for_you's taste part: the history's share of a product's (category, brand), plus this much of its
    # category's share
    taste_category: float = 0.2
    together_weights: dict[str, float] = field(default_factory=lambda: dict(TOGETHER_WEIGHTS))
    # a query whose best final score is under this (or with fewer than weak_min_hits hits) is weak: the
    # search response adds recommendations from a relaxed query and the shopper's profile
    weak_min_hits: int = 3
    weak_score: float | None = None

    def check(self, where: str) -> None:
        """Raise :class:`ConfigError` naming the first bad setting."""
        for name, weights, known in (
            ("for_you_weights", self.for_you_weights, FOR_YOU_WEIGHTS),
            ("together_weights", self.together_weights, TOGETHER_WEIGHTS),
        ):
            if unknown := sorted(set(weights) - set(known)):
                raise ConfigError(f"{where}: recs.{name} names unknown part(s) {unknown}; known: {list(known)}")
            if any(not isinstance(w, int | float) or w < 0 for w in weights.values()):
                raise ConfigError(f"{where}: recs.{name} weights must be numbers >= 0, got {weights}")
        if self.taste_category < 0:
            raise ConfigError(f"{where}: recs.taste_category must be >= 0, not {self.taste_category}")
        if self.guard_days <= 0 or self.guard_min_cases < 0 or self.guard_max_cases < 1:
            raise ConfigError(
                f"{where}: recs.guard_days must be > 0, recs.guard_min_cases >= 0 and recs.guard_max_cases >= 1"
            )
