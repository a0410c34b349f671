"""Each shopper's taste as a click model reads it from what they were shown and what they clicked.

The model (fitted by :mod:`finetune.taste_fit` on logged sessions, saved as ``taste.json`` beside a ranker):

    P(click | shown at rank k, non-personal score g, user u) = e_k · σ(r(g) + Σ_f θ_{u, f(product)})

- ``e_k``: how often rank bucket ``k`` is examined; ``r``: a monotone piecewise-linear map of the ranker's
  non-personal score to the log-odds of a click once examined;
- ``θ_{u, f, v}``: how much more (or less) user ``u`` clicks products whose facet ``f`` (brand, price band,
  category, group) is ``v`` than their rank and relevance predict.  Each facet has a prior over θ, a discrete
  distribution on a grid fitted by EM over every (user, value) of the training log (nonparametric maximum
  likelihood, Kiefer–Wolfowitz): it finds on its own that most values leave a shopper indifferent and a few
  are liked, without assuming a shape.

**Evidence** per (user, facet value) is model-free and kept in the profile (:attr:`engine.profiles.Profile.taste`):
decayed counts of impressions ``n_k`` and of clicks ``c_k`` per rank bucket.  With ``a_k(θ)``, the click chance once
examined of what rank ``k`` shows at taste θ — the mean of ``σ(r(g) + θ)`` over the bucket's logged impressions, so
their spread in relevance is integrated out (σ of the mean logit instead would shrink every taste toward 0) — the
value's log-likelihood at each θ of a grid is exact and linear in the counts:

    log L(θ) = Σ_k c_k log p_k(θ) + (n_k − c_k) log(1 − p_k(θ)),   p_k(θ) = e_k a_k(θ)

and the posterior over θ follows from the facet's prior: a value seen twice moves little, one chosen again and
again over others shown beside it moves a lot.  Where the searches logged how relevant each product was (the
serving model's ``x = r(g)``, :mod:`engine.taste_counts`), those impressions and clicks count at their own mean
``x`` per bucket and outcome, ``p_k(θ) = e_k σ(x̄ + θ)``, instead of the bucket's table: a click on a product
the engine found a poor match is stronger evidence of a taste than one on its best match.

**Ranking**: by the expected click chance of an examined product, ``E[σ(r(g) + Σ_f θ_f)]`` under the posteriors
of the candidate's values (what the Bayes ranking ranks by) — relevance and taste on one scale,
so no weight between them is chosen from logged lists (which show 10 products in an order the shopper's
examination biases, and taught the personal booster about half the weight the taste deserves: docs/results.md,
Personalization).  :class:`engine.ranker.Ranker` maps its log-odds back to its own scale with ``r⁻¹``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.profiles import FACETS, Profile, ProductFacets
from engine.taste_counts import (
    COUNTS_WIDTH,
    TASTE_BUCKETS,
    TASTE_EDGES,
    TASTE_WIDTH,
    taste_bucket,
    taste_parts,
    taste_row,
)

TASTE_FILE = "taste.json"
RANK_EDGES = np.array((1, *TASTE_EDGES))  # bucket b holds ranks [edges[b], edges[b + 1]); the last 11 and deeper
N_BUCKETS = TASTE_BUCKETS
GRID = np.linspace(-3.0, 3.0, 25)  # the support of each facet's prior over θ
ZERO = int(np.argmin(np.abs(GRID)))  # θ = 0


rank_bucket = taste_bucket  # the bucket of 1-based ranks


def evidence_rows(profile: Profile | None, facets: ProductFacets, rows: np.ndarray, now: float, half_life: float):
    """``[len(rows), len(FACETS), TASTE_WIDTH]``: the profile's evidence (:data:`engine.taste_counts.TASTE_PARTS`
    per rank bucket) of each candidate's facet values, decayed to ``now`` (zeros for values never shown, for -1 and
    without a profile)."""
    out = np.zeros((len(rows), len(FACETS), TASTE_WIDTH))
    if profile is None or not profile.taste:
        return out
    decay = 2.0 ** (-max(now - profile.taste_t, 0.0) / half_life)
    for j, f in enumerate(FACETS):
        values = profile.taste.get(f)
        if not values or (f == "group" and profile.groups_id != facets.groups_id):
            continue
        keys = np.fromiter((int(k) for k in values), dtype=np.int64, count=len(values))
        table = np.asarray([taste_row(v) for v in values.values()], dtype=np.float64) * decay
        order = np.argsort(keys)
        keys, table = keys[order], table[order]
        codes = np.asarray(facets.codes(f))[rows]
        pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
        hit = (keys[pos] == codes) & (codes >= 0)
        out[hit, j] = table[pos[hit]]
    return out


@dataclass
class TasteModel:
    examination: np.ndarray  # e_k per rank bucket
    # the click chance, once examined, of what each rank bucket shows at each θ of GRID: ``[N_BUCKETS, len(GRID)]``,
    # the mean of σ(r(g) + θ) over the bucket's logged impressions (or ``[N_BUCKETS]``: a_k, read as σ(logit a_k + θ))
    attraction: np.ndarray
    knots: np.ndarray  # non-personal ranker scores
    logits: np.ndarray  # r at the knots: increasing
    priors: dict[str, np.ndarray] = field(default_factory=dict)  # facet -> prior mass on GRID
    card: dict = field(default_factory=dict)

    def __post_init__(self):
        self.examination = np.asarray(self.examination, dtype=np.float64)
        self.attraction = np.asarray(self.attraction, dtype=np.float64)
        self.knots = np.asarray(self.knots, dtype=np.float64)
        self.logits = np.asarray(self.logits, dtype=np.float64)
        if len(self.knots) < 2 or np.any(np.diff(self.knots) <= 0) or np.any(np.diff(self.logits) <= 0):
            raise ValueError("taste model: r needs at least two knots, increasing in both score and log-odds")
        self.priors = {f: np.asarray(w, dtype=np.float64) for f, w in self.priors.items()}
        bad = [f for f, w in self.priors.items() if f not in FACETS or w.shape != GRID.shape]
        if bad:
            raise ValueError(f"taste model: priors for unknown facets or of the wrong size: {bad}")
        a = self.attraction
        if a.ndim == 1:
            a = 1.0 / (1.0 + np.exp(-(np.log(a / (1.0 - a))[:, None] + GRID[None, :])))
        if a.shape != (len(self.examination), len(GRID)):
            raise ValueError(
                f"taste model: attraction of shape {a.shape}, wanted ({len(self.examination)}, {len(GRID)})"
            )
        self.attraction = a
        # the log-likelihood of a value's counts at each θ of GRID is linear in the counts: counts @ W, with
        # p_kj = e_k a_k(θ_j) the click chance at bucket k: n_k log(1 − p_kj) + c_k log(p_kj / (1 − p_kj))
        p = np.clip(self.examination[:, None] * a, 1e-9, 1.0 - 1e-9)
        self._w = np.vstack([np.log1p(-p), np.log(p) - np.log1p(-p)])

    # r and its inverse: piecewise linear, extended linearly beyond the knots (strictly increasing)
    def relevance_logit(self, g: np.ndarray) -> np.ndarray:
        return _interp(np.asarray(g, dtype=np.float64), self.knots, self.logits)

    def score_of_logit(self, x: np.ndarray) -> np.ndarray:
        return _interp(np.asarray(x, dtype=np.float64), self.logits, self.knots)

    def loglik(self, counts: np.ndarray) -> np.ndarray:
        """``[..., len(GRID)]``: the log-likelihood of each value's evidence ``counts`` ``[..., TASTE_WIDTH]`` (or
        the counts alone, ``[..., 2 · N_BUCKETS]``) at each θ of the grid, less its value at θ = 0.

        Impressions and clicks with a logged relevance count at their mean ``x`` per bucket and outcome,
        ``log(1 − e_k σ(x̄ + θ))`` and ``log(e_k σ(x̄ + θ))``; the rest through the bucket's table ``a_k(θ)``."""
        n, c = counts[..., :N_BUCKETS], counts[..., N_BUCKETS:COUNTS_WIDTH]
        if counts.shape[-1] < TASTE_WIDTH or not counts[..., COUNTS_WIDTH:].any():
            ll = np.concatenate([np.maximum(n, c), c], axis=-1) @ self._w
            return ll - ll[..., [ZERO]]
        _, _, m, s, m1, s1 = taste_parts(counts)
        m1 = np.minimum(m1, c)
        m0 = np.clip(m - m1, 0.0, np.maximum(n - c, 0.0))
        s0 = np.where(m0 > 0, s - s1, 0.0)
        u1 = c - m1  # clicks and non-clicks without an x: the table
        u0 = np.maximum(n - c, 0.0) - m0
        ll = np.concatenate([u0 + u1, u1], axis=-1) @ self._w
        e = self.examination[:, None]
        for mk, sk, clicked in ((m0, s0, False), (m1, s1, True)):
            have = mk > 0
            if not have.any():
                continue
            xbar = np.where(have, sk / np.where(have, mk, 1.0), 0.0)
            p = np.clip(e / (1.0 + np.exp(-(xbar[..., None] + GRID))), 1e-9, 1.0 - 1e-9)  # [..., B, grid]
            ll = ll + (mk[..., None] * (np.log(p) if clicked else np.log1p(-p))).sum(axis=-2)
        return ll - ll[..., [ZERO]]

    def theta(self, facet: str, counts: np.ndarray) -> np.ndarray:
        """The posterior mean taste of each value from its evidence (0 where nothing was shown, or no prior)."""
        w = self.priors.get(facet)
        if w is None:
            return np.zeros(counts.shape[:-1])
        return posterior_mean(self.loglik(counts), w)

    def expected_logit(self, x: np.ndarray, evidence: np.ndarray) -> np.ndarray:
        """The log-odds of each candidate's expected click chance ``E[σ(x + Σ_f θ_f)]`` under its values'
        posteriors, ``x`` its relevance logit (what the Bayes ranking ranks by; ``x`` itself where the evidence
        is none)."""
        dist, lo = np.ones((len(x), 1)), 0  # the distribution of Σθ on GRID's spacing, from lo steps
        seen = np.zeros(len(x), dtype=bool)
        for j, f in enumerate(FACETS):
            w = self.priors.get(f)
            if w is None or not evidence[:, j].any():
                continue
            seen |= evidence[:, j].any(axis=1)
            post = posterior(self.loglik(evidence[:, j]), w)
            nxt = np.zeros((len(x), dist.shape[1] + len(GRID) - 1))
            for k in range(len(GRID)):
                nxt[:, k : k + dist.shape[1]] += dist * post[:, k : k + 1]
            dist, lo = nxt, lo - ZERO
        x = np.asarray(x, dtype=np.float64)
        if dist.shape[1] == 1:
            return x.copy()
        sums = (lo + np.arange(dist.shape[1])) * (GRID[1] - GRID[0])
        p = np.clip((dist / (1.0 + np.exp(-(x[:, None] + sums[None, :])))).sum(axis=1), 1e-12, 1 - 1e-12)
        return np.where(seen, np.log(p) - np.log1p(-p), x)

    def to_dict(self) -> dict:
        return {
            "examination": self.examination.round(6).tolist(),
            "attraction": self.attraction.round(6).tolist(),  # [bucket][θ]
            "knots": self.knots.tolist(),
            "logits": self.logits.tolist(),
            "rank_edges": RANK_EDGES.tolist(),
            "grid": GRID.tolist(),
            "priors": {f: w.round(8).tolist() for f, w in self.priors.items()},
            "card": self.card,
        }

    def save(self, folder: str | Path) -> None:
        p = Path(folder)
        p.mkdir(parents=True, exist_ok=True)
        (p / TASTE_FILE).write_text(json.dumps(self.to_dict(), indent=1, default=str), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "TasteModel | None":
        """The model saved in ``folder`` (None: there is none)."""
        path = Path(folder) / TASTE_FILE
        if not path.is_file():
            return None
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("rank_edges") != RANK_EDGES.tolist() or not np.allclose(d.get("grid", []), GRID):
            raise ValueError(f"{path}: rank buckets or grid of another engine version; retrain with `make finetune`")
        return cls(d["examination"], d["attraction"], d["knots"], d["logits"], d["priors"], d.get("card", {}))


def posterior(loglik: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``[..., len(GRID)]``: the posterior over θ on :data:`GRID` (all mass on θ = 0 where the evidence is none)."""
    logpost = loglik + np.log(np.maximum(prior, 1e-300))
    post = np.exp(logpost - logpost.max(axis=-1, keepdims=True))
    post /= post.sum(axis=-1, keepdims=True)
    none = np.abs(loglik).max(axis=-1) == 0
    post[none] = 0.0
    post[none, ZERO] = 1.0
    return post


def posterior_mean(loglik: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """E[θ | evidence] from the log-likelihood on :data:`GRID` and ``prior`` (0 where the evidence is none)."""
    return posterior(loglik, prior) @ GRID  # GRID[ZERO] is exactly 0


def fit_prior(loglik: np.ndarray, iters: int = 300) -> np.ndarray:
    """The nonparametric maximum-likelihood prior on :data:`GRID` of the values' θ (EM over the mixture weights)
    from each value's log-likelihood on the grid (rows without evidence left out)."""
    loglik = loglik[np.abs(loglik).max(axis=1) > 0]
    w = np.full(len(GRID), 1.0 / len(GRID))
    if not len(loglik):
        return w
    L = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    for _ in range(iters):
        post = L * w
        post /= post.sum(axis=1, keepdims=True) + 1e-300
        w = post.mean(axis=0)
    return w


def _interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation, continued linearly beyond both ends."""
    out = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    if lo.any():
        out[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    if hi.any():
        out[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return out
