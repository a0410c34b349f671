"""Per-candidate features for the final ranker: stage scores and ranks, cross-encoder, popularity, personal.

One row per reranked candidate, columns named by :data:`FEATURES`:

- non-personal: the cross-encoder score (raw and standardized over the
  query's candidates), the first-stage score the z-score mix uses, each
  first stage's raw score and rank (a candidate missing from a stage's list
  gets that list's lowest score and rank ``depth + 1``), the reciprocal-rank
  fusion score, the product's smoothed click-through rate and its
  popularity (log of gain-weighted engagements), and its debiased click rate
  for this very query from the logged searches (:mod:`engine.query_clicks`;
  0 where nothing is logged); how the query's words meet the title
  (:mod:`engine.text_match`: word coverage, code coverage, title length); with ``rerank.base_cosine``
  (:data:`BASE`), the zero-shot encoder's cosine of the query and the title, its gap to the query's best and
  its rank among the candidates (0 where off: a ranker never reads them then, :func:`ranker_features`);
- personal (all 0 for a user without a profile: :data:`COLD`): cosine of the
  product to the user's centroid, the user's affinity (share) to the
  product's category, brand, group and price band, whether the user bought
  it, the strength of the user's history (log of the decayed gains), and
  the user's own click-through rate on the product's category, brand, group
  and price band relative to their average (engaged weight over exposure,
  smoothed by :data:`EXPOSURE_PRIOR` impressions at their average rate:
  1 = as often as anything else, below 1 = shown and passed over; 0 when no
  impressions of the user are known).

Everything is vectorized over the candidates (no per-product Python).
Product counts come from the live event store when serving and from a
:class:`StatsTimeline` when training, which counts only events strictly
before each query's time (point-in-time correct).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.profiles import FACETS, Profile, ProductFacets
from engine.rerank import first_stage_scores, stage_lookup, standardize
from engine.text_match import TEXT_MATCH

BASE = ("base_cos", "base_gap", "base_rank")  # the zero-shot encoder's view (rerank.base_cosine)
NON_PERSONAL = (
    "ce",
    "ce_z",
    "first_stage",
    "bm25_score",
    "bm25_rank",
    "dense_score",
    "dense_rank",
    "rrf",
    "ctr",
    "popularity",
    "query_ctr",
    *TEXT_MATCH,
    "ce_rank",
    "ce_gap",
    *BASE,
)
PERSONAL = (
    "centroid_cos",
    "category_aff",
    "brand_aff",
    "group_aff",
    "price_band_aff",
    "bought",
    "history",
    "category_ctr",
    "brand_ctr",
    "group_ctr",
    "price_band_ctr",
    "session_cos",
    "session",
)
FEATURES = NON_PERSONAL + PERSONAL
PERSONAL_IDX = np.array([FEATURES.index(f) for f in PERSONAL])
_MATCH_COLS = np.array([FEATURES.index(f) for f in TEXT_MATCH])
_BASE_COLS = [FEATURES.index(f) for f in BASE]
COLD = np.zeros(len(PERSONAL))  # the personal features of a user the engine knows nothing about
# smoothing of a user's own click-through rate on a facet value, in impressions: a value shown to the user
# fewer times than this stays near the user's average rate
EXPOSURE_PRIOR = 3.0
SESSION_HALF_LIFE = 1800.0  # seconds (personal.session_minutes)
SESSION_MIN = 0.05  # an in-session profile with less decayed gain than this is over
# event columns of the product counts (engine.events.EVENTS order)
IMPRESSION, CLICK, CART, PURCHASE = range(4)


@dataclass
class Candidates:
    """One query's reranked candidates and everything non-personal known about them."""

    rows: np.ndarray  # product rows, reciprocal-rank-fusion order
    rrf: np.ndarray  # fusion scores
    first: np.ndarray  # the first-stage score the z-score mix uses
    stage_scores: dict[str, np.ndarray]
    stage_ranks: dict[str, np.ndarray]
    ce: np.ndarray | None = None  # cross-encoder scores
    lists: list = field(default_factory=list)  # each stage's full list (the hybrid tail below the candidates)
    query: str | None = None  # the text the candidates were searched for
    match: np.ndarray | None = None  # [n, len(TEXT_MATCH)]: how the query's words meet each title
    base: np.ndarray | None = None  # the zero-shot encoder's cosine of the query and each title (rerank.base_cosine)

    @classmethod
    def from_stages(
        cls, fused, top: Sequence, lists: Sequence, stages: Sequence[str], first_mode: str, depth: int
    ) -> "Candidates":
        rows = np.asarray(fused.rows)
        scores, ranks = {}, {}
        for name, lst in zip(stages, top):
            scores[name], rank = stage_lookup(rows, lst)
            ranks[name] = np.where(rank > 0, rank, depth + 1.0)
        first = first_stage_scores(fused, top, first_mode, [scores[name] for name in stages])
        return cls(rows, np.asarray(fused.scores, dtype=np.float64), first, scores, ranks, None, list(lists))


def ctr_popularity(counts: np.ndarray, totals: np.ndarray, prior: float) -> tuple[np.ndarray, np.ndarray]:
    """(smoothed click-through rate, popularity) of products from their event counts ``[n, 4]`` and the
    catalog's totals ``[4]``: ``(clicks + prior * ctr_all) / (max(impressions, clicks) + prior)`` and
    ``log(1 + clicks + 2 carts + 3 purchases)``.  A rate lies in [0, 1] by construction: a click nobody logged
    an impression for counts as one (clicks sent without impressions cannot push a rate above 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    ctr_all = min(totals[CLICK] / totals[IMPRESSION], 1.0) if totals[IMPRESSION] > 0 else 0.0
    seen = np.maximum(counts[:, IMPRESSION], counts[:, CLICK])
    ctr = (counts[:, CLICK] + prior * ctr_all) / (seen + prior)
    popularity = np.log1p(counts[:, CLICK] + 2 * counts[:, CART] + 3 * counts[:, PURCHASE])
    return ctr, popularity


def _lookup(shares: dict[str, float], codes: np.ndarray) -> np.ndarray:
    """Share of each code (0 for codes the user never engaged with, and for -1)."""
    if not shares:
        return np.zeros(len(codes))
    keys = np.fromiter((int(k) for k in shares), dtype=np.int64, count=len(shares))
    vals = np.fromiter(shares.values(), dtype=np.float64, count=len(shares))
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    return np.where((keys[pos] == codes) & (codes >= 0), vals[pos], 0.0)


def personal_features(
    rows: np.ndarray,
    profile: Profile | None,
    facets: ProductFacets,
    now: float,
    half_life: float,
    bought_rows: np.ndarray | None = None,
    session_half_life: float = SESSION_HALF_LIFE,
) -> np.ndarray:
    """``[n, len(PERSONAL)]`` for the candidate rows; all :data:`COLD` without a profile.  ``session_cos``: the
    cosine to the in-session profile's centroid (what the shopper engaged with in the last minutes; 0 once its
    decayed gain is below :data:`SESSION_MIN`), ``session``: ``log1p`` of that gain."""
    out = np.zeros((len(rows), len(PERSONAL)))
    if profile is None or profile.weight <= 0:
        return out
    c = profile.unit_centroid()
    if c is not None and facets.vectors.shape[1] == len(c):
        out[:, 0] = np.asarray(facets.vectors[rows], dtype=np.float32) @ c
    for j, f in enumerate(FACETS):
        if f == "group" and profile.groups_id != facets.groups_id:
            continue  # group codes from another dense build
        aff = _lookup(profile.shares(f), np.asarray(facets.codes(f))[rows])
        top = aff.max() if len(aff) else 0.0
        out[:, 1 + j] = aff / top if top > 0 else aff  # relative to the best-liked value among the candidates
    if bought_rows is not None and len(bought_rows):
        out[:, 5] = np.isin(rows, bought_rows)
    out[:, 6] = np.log1p(profile.strength(now, half_life))
    if profile.exposure_total > 0:
        to_now_w, to_now_e = profile.weight_at(now, half_life), profile.exposure_at(now, half_life)
        rate = profile.weight * to_now_w / (profile.exposure_total * to_now_e)
        for j, f in enumerate(FACETS):
            if f == "group" and profile.groups_id != facets.groups_id:
                continue
            codes = np.asarray(facets.codes(f))[rows]
            engaged = _lookup(profile.affinities.get(f) or {}, codes) * to_now_w
            seen = _lookup(profile.exposure.get(f) or {}, codes) * to_now_e
            ctr = (engaged + EXPOSURE_PRIOR * rate) / (seen + EXPOSURE_PRIOR)
            out[:, 7 + j] = np.where(codes >= 0, ctr / rate, 1.0)  # no value: as the average
    strength = profile.session_strength(now, session_half_life)
    sc = profile.unit_session_centroid() if strength >= SESSION_MIN else None
    if sc is not None and facets.vectors.shape[1] == len(sc):
        out[:, PERSONAL.index("session_cos")] = np.asarray(facets.vectors[rows], dtype=np.float32) @ sc
        out[:, PERSONAL.index("session")] = np.log1p(strength)
    return out


def feature_matrix(
    cand: Candidates,
    ctr: np.ndarray,
    popularity: np.ndarray,
    personal: np.ndarray | None,
    query_ctr: np.ndarray | None = None,
) -> np.ndarray:
    """``[n, len(FEATURES)]`` for one query's candidates (``ctr``/``popularity``/``query_ctr``: one per
    candidate)."""
    n = len(cand.rows)
    X = np.zeros((n, len(FEATURES)))
    ce = cand.ce if cand.ce is not None else np.zeros(n)
    X[:, 0] = ce
    X[:, 1] = standardize(ce)
    X[:, 2] = cand.first
    for name in ("bm25", "dense"):
        if name in cand.stage_scores:
            X[:, FEATURES.index(f"{name}_score")] = cand.stage_scores[name]
            X[:, FEATURES.index(f"{name}_rank")] = cand.stage_ranks[name]
    X[:, 7] = cand.rrf
    X[:, 8] = ctr
    X[:, 9] = popularity
    if query_ctr is not None:
        X[:, 10] = query_ctr
    if cand.match is not None:
        X[:, _MATCH_COLS] = cand.match
    if n:  # where the cross-encoder puts each candidate among this query's, and how far below its best
        X[np.argsort(-ce, kind="stable"), FEATURES.index("ce_rank")] = np.arange(1, n + 1)
        X[:, FEATURES.index("ce_gap")] = ce - ce.max()
    base = cand.base
    if n and base is not None:
        X[:, _BASE_COLS[0]] = base
        X[:, _BASE_COLS[1]] = base - base.max()
        X[np.argsort(-base, kind="stable"), _BASE_COLS[2]] = np.arange(1, n + 1)
    if personal is not None:
        X[:, PERSONAL_IDX] = personal
    return X


def ranker_features(features: Sequence[str], base_cosine: bool) -> list[str]:
    """The features a ranker may learn from: ``features`` less :data:`BASE` where ``rerank.base_cosine`` is off
    (they are not computed then)."""
    return [f for f in features if base_cosine or f not in BASE]


class StatsTimeline:
    """Point-in-time product counts from an event log: :meth:`at` counts only events strictly before ``t``.

    Built once from parallel arrays (product row, event code, time); each lookup is a vectorized
    ``searchsorted`` over (row, time) keys.
    """

    def __init__(self, rows: np.ndarray, codes: np.ndarray, ts: np.ndarray, n_products: int, n_codes: int = 4):
        rows, codes, ts = np.asarray(rows, dtype=np.int64), np.asarray(codes), np.asarray(ts, dtype=np.float64)
        self.n = n_products
        self.t0 = float(ts.min()) if len(ts) else 0.0
        self.span = float(ts.max() - self.t0 + 2.0) if len(ts) else 2.0
        self.keys = []
        for c in range(n_codes):
            sel = codes == c
            self.keys.append(np.sort(rows[sel] * self.span + (ts[sel] - self.t0)))
        self.totals_t = [np.sort(ts[codes == c]) for c in range(n_codes)]

    def at(self, rows: np.ndarray, t: float) -> np.ndarray:
        """Counts ``[len(rows), 4]`` of each product's events strictly before ``t``."""
        rows = np.asarray(rows, dtype=np.int64)
        base = rows * self.span
        tt = min(max(t - self.t0, -1.0), self.span - 1.0)
        out = np.zeros((len(rows), len(self.keys)))
        for c, keys in enumerate(self.keys):
            out[:, c] = np.searchsorted(keys, base + tt, side="left") - np.searchsorted(keys, base - 1.5, side="left")
        return out

    def totals(self, t: float) -> np.ndarray:
        return np.array([np.searchsorted(x, t, side="left") for x in self.totals_t], dtype=np.float64)


def timeline_ctr_popularity(
    timeline: StatsTimeline, rows: np.ndarray, t: float, prior: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ctr, popularity) of ``rows`` from events before ``t`` (the global click rate also before ``t``)."""
    return ctr_popularity(timeline.at(rows, t), timeline.totals(t), prior)
