"""The personal part of the staged final ranker: ``f = g(non-personal) + s · h(personal)``.

``g`` is fitted first (:func:`finetune.ranker_fit.fit_base`); ``h`` is boosted over the personal features only,
from ``g``'s scores, so the weaker personal signal is not cut short by when the relevance part stops improving.
Whether ``h`` ships, and how much of it (``s``), is decided by how sure sessions it was not fitted on are of its
NDCG@10 gain over ``g`` alone:

- **cross-validated** (``personal_folds`` ≥ 2, the default): every training session validates once.  ``h`` is
  fitted on all folds but one, for every number of trees up to ``num_rounds``; the number of trees is where
  the folds' mean NDCG@10 of ``g + h`` on their held-out sessions peaks; the gain is each session's NDCG@10
  difference at that number of trees, out of fold.  The personal signal is a small part of what a click says
  (a medium taste moves NDCG@10 by ~0.01 on position-biased logged sessions), so one held-out slice of 15%
  cannot tell it from noise: five folds measure it on 6–7× as many sessions.  Then one ``h`` on every session.
- **held out** (``personal_folds`` 0 or 1): the last ``valid_fraction`` of the sessions, as before.

``s = 1 − 1/z²`` (positive-part James-Stein) where ``z`` (mean gain over its standard error) exceeds
``personal_min_z`` (one-sided 5%); otherwise ``h`` is dropped and personalization changes nothing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.features import PERSONAL
from finetune.ranker_fit import fit, fit_base, ints, lambdarank_params, model_inputs, train_set
from finetune.ranker_sessions import Dataset


def ndcg_per_group(y: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10) -> np.ndarray:
    """NDCG@k of each group (rows in group order; ties keep row order), gains ``2^y − 1`` as LightGBM's
    lambdarank uses: :func:`core.metrics.ndcg` over one query per group."""
    from core import metrics

    qrels, run = {}, {}
    start = 0
    for i, n in enumerate(groups):
        qrels[i] = {str(j): float(g) for j, g in enumerate(2.0 ** y[start : start + n] - 1)}
        run[i] = metrics.top_ids(np.arange(n), scores[start : start + n], k)
        start += n
    return metrics.ndcg(qrels, run, k, per_query=True)


def gain_check(d: np.ndarray) -> dict:
    """Mean, standard error and z of per-session NDCG@10 differences."""
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    mean = float(d.mean()) if len(d) else 0.0
    return {
        "sessions": int(len(d)),
        "ndcg@10_diff": round(mean, 4),
        "se": round(se, 4),
        "z": round(mean / se, 2) if se > 0 else 0.0,
    }


def personal_gain(g, h, valid: Dataset) -> dict:
    """Does ``h`` help on the validation sessions?  Per-session NDCG@10 of ``g + h`` minus ``g``: mean, its
    standard error and z (mean over standard error)."""
    base = g.predict(model_inputs(g.feature_name(), valid, serving=True))
    both = base + h.predict(model_inputs(h.feature_name(), valid))
    return gain_check(ndcg_per_group(valid.y, both, valid.groups) - ndcg_per_group(valid.y, base, valid.groups))


def shrinkage(check: dict, min_z: float) -> float:
    """The share of ``h`` that ships: ``1 − 1/z²`` above ``min_z`` (and 1), else 0."""
    z = check["z"]
    return round(max(0.0, 1.0 - 1.0 / z**2), 3) if z > max(min_z, 1.0) else 0.0


def fit_staged(train: Dataset, valid: Dataset | None, tcfg, features: Sequence[str], progress: bool = True, **debias):
    """``g`` over the non-personal features (and the logged position), then ``h`` over the personal ones,
    boosted from ``g``'s scores and stopped early on ``valid``: ``f = g + h``.  Returns
    ``(g, h, curve of g, curve of g + h, g's position choice)``."""
    base = [f for f in features if f not in PERSONAL]
    personal = [f for f in features if f in PERSONAL]
    g, curve_g, choice = fit_base(train, valid, tcfg, base, progress, **debias)
    has_valid = valid is not None and len(valid.groups) > 0
    names = g.feature_name()
    init = (
        g.predict(model_inputs(names, train)),
        g.predict(model_inputs(names, valid, serving=True)) if has_valid else None,
    )
    h, curve_h = fit(train, valid if has_valid else None, tcfg, personal, progress, init=init, **debias)
    return g, h, curve_g, curve_h, choice


def fit_personal_cv(g, data: Dataset, tcfg, personal: Sequence[str], **debias) -> tuple:
    """``h`` over ``personal`` on top of ``g`` with the number of trees and the gain check from
    ``tcfg.personal_folds``-fold cross-validation over the sessions of ``data`` (each session wholly in one
    fold; the held-out sessions scored as served: position 0 for ``g``, rows in a shuffled order).  Returns
    ``(h, curve of the folds' mean NDCG@10 of g + h per number of trees, check)``; ``check`` is
    :func:`gain_check` of the out-of-fold differences at the chosen number of trees, plus ``folds`` and
    ``trees``."""
    import lightgbm as lgb

    data = data.shuffled(tcfg.seed)  # held-out rows measured as served: ties must not inherit the logged order
    names = list(personal)
    method, propensity, clip = debias.get("method"), debias.get("propensity"), debias.get("clip", 10.0)
    fitted = g.predict(model_inputs(g.feature_name(), data))  # as h is trained on: g with the logged position
    served = g.predict(model_inputs(g.feature_name(), data, serving=True))
    if data.offset is not None:  # h learns on top of the taste model's scores (finetune.ranker)
        fitted, served = fitted + data.offset, served + data.offset
    n = len(data.groups)
    k = min(tcfg.personal_folds, n)
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[np.random.default_rng(tcfg.seed).permutation(n)] = np.arange(n) % k
    row_fold = np.repeat(fold_of, data.groups)
    params = lambdarank_params(tcfg, names)
    curves, models, held = [], [], []
    for f in range(k):
        tr, te = data.take(fold_of != f), data.take(fold_of == f)
        rows_tr, rows_te = row_fold != f, row_fold == f
        dtrain = train_set(names, tr, fitted[rows_tr], method, propensity, clip, positions=False)
        dvalid = lgb.Dataset(
            model_inputs(names, te), ints(te.y), group=te.groups, reference=dtrain, init_score=served[rows_te]
        )
        evals: dict = {}
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=tcfg.num_rounds,
            valid_sets=[dvalid],
            valid_names=["valid"],
            callbacks=[lgb.record_evaluation(evals)],
        )
        curves.append(np.asarray(evals["valid"]["ndcg@10"]))
        models.append(booster)
        held.append((te, served[rows_te]))
    # a fold whose booster found no more splits stops early: its curve stays at its last value
    longest = max(1, max(len(c) for c in curves))
    curve = np.mean([np.pad(c, (0, longest - len(c)), mode="edge") if len(c) else np.zeros(longest) for c in curves], 0)
    trees = int(np.argmax(curve)) + 1
    diffs = []
    for booster, (te, base) in zip(models, held):
        both = base + booster.predict(model_inputs(names, te), num_iteration=trees)
        diffs.append(ndcg_per_group(te.y, both, te.groups) - ndcg_per_group(te.y, base, te.groups))
    check = {**gain_check(np.concatenate(diffs)), "folds": k, "trees": trees}
    h = lgb.train(
        params, train_set(names, data, fitted, method, propensity, clip, positions=False), num_boost_round=trees
    )
    return h, curve.tolist(), check
