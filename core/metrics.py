"""Ranking metrics as plain functions over runs and qrels.

``qrels``: ``{qid: {pid: gain}}`` (graded gains; a product with gain > 0 is
relevant).  ``run``: ``{qid: {pid: score}}`` (higher is better) or
``{qid: [pid, ...]}`` already ranked.  Every function returns the mean over
the queries in ``qrels``; a query absent from the run scores 0.  With
``per_query=True`` the per-query values are returned as an array (qrels
order) instead.

Definitions follow trec_eval/ranx: NDCG with linear gains and a log2
discount (Järvelin & Kekäläinen), reciprocal rank of the first relevant
product, recall as the share of relevant products retrieved, average
precision over all relevant products.  Recall of a query with no relevant
product is undefined (0/0): NaN per query and left out of the mean, as in
ranx and BEIR, whose qrels hold only queries with a relevant product
(counting it as 0 caps every system below 1; Home Depot dev: 188 of 1,000
queries have no product rated ≥ 2.5).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, float]]
Run = Mapping[str, "Mapping[str, float] | Sequence[str]"]


def ranked(result) -> list[str]:
    """A run entry's product ids, best first."""
    if isinstance(result, Mapping):
        # score descending; ties keep the run's own order (the order the system returned them in)
        return [pid for pid, _ in sorted(result.items(), key=lambda kv: -kv[1])]
    return list(result)


def _gain_matrix(qrels: Qrels, run: Run, k: int | None, threshold: float | None = None):
    """Per query: gains of the top-k ranked products, and the qrels' gains.

    Returns (gains [n_q, k], relevant-flags [n_q, k], n_relevant [n_q], ideal gains [n_q, k]).
    With ``threshold`` a product is relevant when its qrels value is >= threshold.
    """
    qids = list(qrels)
    if k is None:
        k = max([len(ranked(run.get(q, ()))) for q in qids] + [max((len(v) for v in qrels.values()), default=1), 1])
    n = len(qids)
    gains = np.zeros((n, k), dtype=np.float64)
    rel = np.zeros((n, k), dtype=bool)
    ideal = np.zeros((n, k), dtype=np.float64)
    n_rel = np.zeros(n, dtype=np.int64)
    is_rel = (lambda g: g >= threshold) if threshold is not None else (lambda g: g > 0)
    for i, q in enumerate(qids):
        judged = qrels[q]
        for j, pid in enumerate(ranked(run.get(q, ()))[:k]):
            g = judged.get(pid)
            if g is not None:
                gains[i, j] = max(g, 0.0)
                rel[i, j] = is_rel(g)
        positive = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
        ideal[i, : len(positive)] = positive
        n_rel[i] = sum(1 for g in judged.values() if is_rel(g))
    return gains, rel, n_rel, ideal


def top_ids(rows: np.ndarray, scores: np.ndarray, k: int = 10) -> list[str]:
    """A ranked run entry from product rows and their scores: the top ``k`` rows by score (ties keep the
    rows' order), as strings."""
    return np.asarray(rows)[np.argsort(-np.asarray(scores), kind="stable")][:k].astype(str).tolist()


def _mean(values: np.ndarray, per_query: bool):
    return values if per_query else float(values.mean()) if len(values) else 0.0


def mrr(qrels: Qrels, run: Run, k: int = 10, per_query: bool = False):
    """Mean reciprocal rank of the first relevant product within the top k."""
    _, rel, _, _ = _gain_matrix(qrels, run, k)
    first = rel.argmax(axis=1)
    rr = np.where(rel.any(axis=1), 1.0 / (first + 1), 0.0)
    return _mean(rr, per_query)


def ndcg(qrels: Qrels, run: Run, k: int = 10, per_query: bool = False):
    """Normalized discounted cumulative gain at k (graded gains, log2 discount)."""
    gains, _, _, ideal = _gain_matrix(qrels, run, k)
    discount = 1.0 / np.log2(np.arange(2, gains.shape[1] + 2))
    dcg = gains @ discount
    idcg = ideal @ discount
    vals = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    return _mean(vals, per_query)


def nanmean(values: np.ndarray) -> float:
    """The mean of the defined (non-NaN) values; 0 when none is."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else 0.0


def recall(qrels: Qrels, run: Run, k: int = 100, threshold: float | None = None, per_query: bool = False):
    """Share of the relevant products (gain > 0, or qrels value >= threshold) in the top k; NaN for a query
    with no relevant product (per query), which the mean leaves out."""
    _, rel, n_rel, _ = _gain_matrix(qrels, run, k, threshold)
    vals = np.divide(rel.sum(axis=1), n_rel, out=np.full(len(n_rel), np.nan), where=n_rel > 0)
    return vals if per_query else nanmean(vals)


def average_precision(qrels: Qrels, run: Run, k: int | None = None, per_query: bool = False):
    """Mean average precision (over all relevant products; the ranking cut at k if given)."""
    _, rel, n_rel, _ = _gain_matrix(qrels, run, k)
    precision_at = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    vals = np.divide((precision_at * rel).sum(axis=1), n_rel, out=np.zeros(len(n_rel)), where=n_rel > 0)
    return _mean(vals, per_query)


map_ = average_precision


def recall_curve(qrels: Qrels, run: Run, ks: Sequence[int], threshold: float | None = None) -> list[float]:
    """Recall at each cut in ``ks`` from one pass over the run."""
    kmax = max(ks)
    _, rel, n_rel, _ = _gain_matrix(qrels, run, kmax, threshold)
    found = np.cumsum(rel, axis=1)
    out = []
    for k in ks:
        vals = np.divide(found[:, k - 1], n_rel, out=np.full(len(n_rel), np.nan), where=n_rel > 0)
        out.append(nanmean(vals))
    return out
