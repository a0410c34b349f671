"""Off-policy estimates from logged searches: how many top-k clicks would a new ranking have drawn on searches
another ranking served?  The ship guard's measure (issue 24).

Under the position-based click model (:mod:`finetune.click_model`) a product clicked at logged rank ``r`` is
relevant with weight ``1 / θ_r``; a new ranking that puts it at rank ``r'`` would draw ``θ_r' / θ_r`` of that click
in expectation.  So the clipped inverse-propensity estimate of clicks@k of a new ranking, per logged search, is
``Σ_clicked [r' ≤ k] · min(θ_r' / θ_r, clip)`` (Joachims, Swaminathan and Schnabel, *Unbiased Learning-to-Rank
with Biased Feedback*, WSDM 2017; clipping trades a little bias for much less variance).  The logged ranking
itself scores its own clicks in the top k.  Searches are the paired units of a bootstrap: a new ranker ships
only when the interval of its gain lies above zero.

:func:`debiased_dcg` scores a ranking of the rows a search showed: the inverse-propensity-weighted DCG@10 of its
engaged rows, an unbiased estimate of the relevance-weighted DCG under the same click model (what the retrain
chooses its debiasing method and its number of trees by).
"""

from __future__ import annotations

import numpy as np

from core.bootstrap import paired_bootstrap


def ips_clicks_at_k(
    search: np.ndarray,
    logged_rank: np.ndarray,
    new_rank: np.ndarray,
    clicked: np.ndarray,
    propensity: np.ndarray,
    k: int = 10,
    clip: float = 10.0,
    n_searches: int | None = None,
) -> np.ndarray:
    """Per logged search (ids ``0..n_searches-1``): the estimated clicks@k of the ranking that puts each logged row
    at ``new_rank`` (1-based; a product the new ranking leaves out: any rank > k).  ``propensity``: θ per rank
    relative to rank 1 (``PBMFit.propensity``); ranks beyond it take its last value."""
    search = np.asarray(search, dtype=np.int64)
    lr, nr = np.asarray(logged_rank, dtype=np.int64), np.asarray(new_rank, dtype=np.int64)
    c = np.asarray(clicked, dtype=bool)
    if not (len(search) == len(lr) == len(nr) == len(c)):
        raise ValueError("search, logged_rank, new_rank and clicked differ in length")
    if len(lr) and (lr.min() < 1 or nr.min() < 1):
        raise ValueError("ranks are 1-based")
    theta = np.asarray(propensity, dtype=np.float64)
    last = len(theta) - 1
    t_logged = theta[np.minimum(lr - 1, last)]
    t_new = theta[np.minimum(nr - 1, last)]
    w = np.where(c & (nr <= k), np.minimum(t_new / np.maximum(t_logged, 1e-12), clip), 0.0)
    n = int(n_searches if n_searches is not None else (search.max() + 1 if len(search) else 0))
    return np.bincount(search, w, minlength=n)


def guard(
    search: np.ndarray,
    logged_rank: np.ndarray,
    serving_rank: np.ndarray,
    new_rank: np.ndarray,
    clicked: np.ndarray,
    propensity: np.ndarray,
    k: int = 10,
    clip: float = 10.0,
    seed: int = 0,
    n_searches: int | None = None,
) -> dict:
    """The new ranking against the serving one on the same logged searches: both estimated by clipped IPS,
    the paired bootstrap of the difference, and ``ship``: whether its whole interval is above zero.
    ``n_searches``: how many searches the ids ``search`` come from (those without a row count zero)."""
    n = int(np.asarray(search).max()) + 1 if len(search) else 0
    n = max(n, int(n_searches or 0))
    serving = ips_clicks_at_k(search, logged_rank, serving_rank, clicked, propensity, k, clip, n)
    new = ips_clicks_at_k(search, logged_rank, new_rank, clicked, propensity, k, clip, n)
    d = paired_bootstrap(serving, new, seed=seed)
    return {
        "searches": n,
        f"serving_clicks@{k}": round(d["base"], 4),
        f"new_clicks@{k}": round(d["personal"], 4),
        "diff": round(d["diff"], 4),
        "ci_low": round(d["ci_low"], 4),
        "ci_high": round(d["ci_high"], 4),
        "p_value": round(d["p_value"], 4),
        "ship": bool(d["ci_low"] > 0),
    }


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each candidate under ``scores`` (ties keep the candidate order)."""
    order = np.argsort(-scores, kind="stable")
    r = np.empty(len(scores), dtype=np.int64)
    r[order] = np.arange(1, len(scores) + 1)
    return r


def debiased_dcg(d, scores: np.ndarray, propensity: np.ndarray, clip: float, k: int = 10) -> float:
    """Mean over ``d``'s sessions of ``Σ_engaged gain · min(θ_1/θ_pos, clip) / log2(1 + rank)`` over the top
    ``k`` of the rows ranked by ``scores`` (rows = what the session showed, ``pos`` where it was shown)."""
    theta = np.asarray(propensity, dtype=np.float64)
    total, start = 0.0, 0
    for n in d.groups:
        y = d.y[start : start + n]
        pos = np.clip(np.maximum(d.position[start : start + n], 0).astype(np.int64), 0, len(theta) - 1)
        r = ranks_of(scores[start : start + n])
        ips = np.minimum(1.0 / np.maximum(theta[pos], 1e-12), clip)
        keep = (y > 0) & (r <= k)
        total += float(np.sum(y[keep] * ips[keep] / np.log2(1.0 + r[keep])))
        start += n
    return total / max(len(d.groups), 1)
