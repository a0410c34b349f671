"""The position-based click model (PBM), fitted by expectation-maximization on logged impressions.

A shopper clicks a shown product when they examine its position and find it relevant:
``P(click | query, product, rank k) = θ_k · γ_{query, product}``.  ``θ`` (the examination propensity of each rank)
is what debiasing needs: a click at rank 8 says more than a click at rank 1, by ``θ_1 / θ_8``.  EM treats
examination and relevance as hidden (Chuklin, Markov and de Rijke, *Click Models for Web Search*, 2015, §4.2):

- E-step, for an unclicked row: ``P(E=1 | no click) = θ_k (1 − γ) / (1 − θ_k γ)`` and
  ``P(R=1 | no click) = (1 − θ_k) γ / (1 − θ_k γ)``; a clicked row was examined and relevant;
- M-step: ``θ_k`` is the mean posterior examination over the rows shown at rank k, ``γ_p`` the mean posterior
  relevance over the rows of pair p.

Everything is arrays (``np.bincount`` over rank and pair ids): millions of rows fit in seconds.  Only ratios of
``θ`` are identified when every pair is seen at few ranks, so :attr:`PBMFit.propensity` is reported relative
to rank 1 (``θ_k / θ_1``), which is what inverse propensity weights use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PBMFit:
    examination: np.ndarray  # θ_k per rank (0-based: index 0 is rank 1)
    relevance: np.ndarray  # γ per pair id
    iterations: int
    log_likelihood: float
    rows: int

    @property
    def propensity(self) -> np.ndarray:
        """θ_k / θ_1: how likely rank k is examined, relative to the top."""
        return self.examination / max(float(self.examination[0]), 1e-12)

    def weights(self, ranks: np.ndarray, clip: float = 10.0) -> np.ndarray:
        """Inverse propensity weights of clicks at 1-based ``ranks`` (``θ_1 / θ_k``, at most ``clip``; ranks
        beyond the fitted ones take the deepest's)."""
        idx = np.clip(np.asarray(ranks, dtype=np.int64) - 1, 0, len(self.examination) - 1)
        return np.minimum(1.0 / np.maximum(self.propensity[idx], 1e-12), clip)

    def to_dict(self) -> dict:
        return {
            "propensity": [round(float(x), 4) for x in self.propensity],
            "examination": [round(float(x), 4) for x in self.examination],
            "iterations": self.iterations,
            "log_likelihood": round(self.log_likelihood, 3),
            "rows": self.rows,
            "pairs": len(self.relevance),
        }


def fit_pbm(
    pair: np.ndarray,
    rank: np.ndarray,
    clicked: np.ndarray,
    n_ranks: int | None = None,
    max_iter: int = 300,
    tol: float = 1e-7,
    prior: float = 0.0,
) -> PBMFit:
    """Fit θ (per rank) and γ (per pair) to logged rows: ``pair`` an int id per (query, product), ``rank`` the
    1-based rank it was shown at, ``clicked`` whether it was clicked.  ``prior``: pseudo-rows at γ = 0.5 and θ
    = 0.5 per pair and rank (0 by default: a prior pulls the many nearly irrelevant deep pairs up and the deep
    ranks' θ down — measured in the tests)."""
    pair = np.asarray(pair, dtype=np.int64)
    k = np.asarray(rank, dtype=np.int64) - 1
    c = np.asarray(clicked, dtype=bool)
    if not (len(pair) == len(k) == len(c)):
        raise ValueError(f"pair, rank and clicked differ in length: {len(pair)}, {len(k)}, {len(c)}")
    if len(pair) == 0:
        raise ValueError("no logged rows to fit a click model on")
    if k.min() < 0:
        raise ValueError("ranks are 1-based; got a rank below 1")
    n_ranks = int(n_ranks or k.max() + 1)
    k = np.minimum(k, n_ranks - 1)
    n_pairs = int(pair.max()) + 1
    rows_k = np.bincount(k, minlength=n_ranks).astype(np.float64)
    rows_p = np.bincount(pair, minlength=n_pairs).astype(np.float64)
    theta = np.full(n_ranks, 0.5)
    gamma = np.full(n_pairs, 0.5)
    cf = c.astype(np.float64)
    prev = -np.inf
    ll = prev
    it = 0
    for it in range(1, max_iter + 1):
        t, g = theta[k], gamma[pair]
        p_click = np.clip(t * g, 1e-12, 1 - 1e-12)
        ll = float(np.sum(cf * np.log(p_click) + (1 - cf) * np.log1p(-p_click)))
        denom = 1.0 - t * g
        post_e = np.where(c, 1.0, t * (1.0 - g) / np.maximum(denom, 1e-12))
        post_r = np.where(c, 1.0, (1.0 - t) * g / np.maximum(denom, 1e-12))
        theta = _mean(np.bincount(k, post_e, minlength=n_ranks), rows_k, prior)
        gamma = _mean(np.bincount(pair, post_r, minlength=n_pairs), rows_p, prior)
        if abs(ll - prev) < tol * max(1.0, abs(ll)):
            break
        prev = ll
    return PBMFit(theta, gamma, it, ll, len(pair))


def _mean(total: np.ndarray, rows: np.ndarray, prior: float) -> np.ndarray:
    """(total + prior/2) / (rows + prior), 0.5 where nothing was seen."""
    seen = rows + prior
    return np.where(seen > 0, (total + 0.5 * prior) / np.maximum(seen, 1e-12), 0.5)
