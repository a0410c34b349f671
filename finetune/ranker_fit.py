"""LightGBM LambdaRank fitting for the final ranker: parameters, datasets with the logged position and debiasing
weights, one booster stopped early on held-out sessions (:func:`fit`, :func:`fit_base`) or its number of trees
chosen by cross-validation over judged sessions (:func:`fit_cv`).  :mod:`finetune.ranker` puts them together."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.features import FEATURES
from finetune.ranker_sessions import Dataset

POSITION = "position"  # training only: the rank a logged product was shown at (engine.ranker sets it to 0)
MONOTONE = {
    "position": -1,
    "query_ctr": 1,
    "centroid_cos": 1,
    "category_aff": 1,
    "brand_aff": 1,
    "group_aff": 1,
    "price_band_aff": 1,
    "category_ctr": 1,
    "brand_ctr": 1,
    "group_ctr": 1,
    "price_band_ctr": 1,
}


def lambdarank_params(tcfg, names: Sequence[str]) -> dict:
    """LightGBM LambdaRank parameters (NDCG@10) for a model reading ``names``."""
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "ndcg_eval_at": [10],
        "lambdarank_truncation_level": 20,
        "num_leaves": tcfg.num_leaves,
        "learning_rate": tcfg.learning_rate,
        "min_data_in_leaf": tcfg.min_data_in_leaf,
        "feature_fraction": 1.0,
        "bagging_fraction": 1.0,
        "lambda_l2": 1.0,
        "seed": tcfg.seed,
        "deterministic": True,
        "num_threads": 2,
        "verbosity": -1,
        "feature_pre_filter": False,
        "monotone_constraints": [MONOTONE.get(f, 0) for f in names],
        "monotone_constraints_method": "advanced",
    }


def ints(y: np.ndarray) -> np.ndarray:
    return np.rint(y).astype(np.int32)  # LambdaRank labels are integer grades


def session_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train rows, test rows) splits in which every session lies wholly on one side (seeded)."""
    n = len(groups)
    if not 2 <= k <= n:
        raise ValueError(f"cross-validation needs 2 <= folds <= sessions, got {k} folds for {n} sessions")
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    row_fold = np.repeat(fold_of, groups)
    rows = np.arange(len(row_fold))
    return [(rows[row_fold != f], rows[row_fold == f]) for f in range(k)]


def fit_cv(data: Dataset, tcfg, features: Sequence[str] = FEATURES) -> tuple:
    """Judged pairs: the number of boosting rounds chosen by ``tcfg.cv_folds``-fold cross-validation over
    the sessions (LightGBM's ``cv``; each session wholly in one fold; stops when the folds' mean NDCG@10 has
    not improved for ``early_stopping`` rounds), then one booster fitted on every session for that many
    rounds.  Every session both trains and validates, so the choice does not hang on one small held-out
    slice.  Returns ``(booster, curve)``, ``curve`` the folds' mean NDCG@10 per round."""
    import lightgbm as lgb

    names = list(features)
    params = lambdarank_params(tcfg, names)
    full = lgb.Dataset(
        model_inputs(names, data), ints(data.y), group=data.groups, feature_name=names, free_raw_data=False
    )
    res = lgb.cv(
        params,
        full,
        num_boost_round=tcfg.num_rounds,
        folds=session_folds(data.groups, tcfg.cv_folds, tcfg.seed),
        callbacks=[lgb.early_stopping(tcfg.early_stopping, verbose=False)],
    )
    curve = [float(v) for v in next(v for key, v in res.items() if key.endswith("ndcg@10-mean"))]
    booster = lgb.train(params, full, num_boost_round=len(curve))
    return booster, curve


def fit(
    train: Dataset,
    valid: Dataset | None,
    tcfg,
    features: Sequence[str] = FEATURES,
    progress: bool = True,
    init: tuple[np.ndarray, np.ndarray | None] | None = None,
    debias: bool | None = None,
    method: str | None = None,
    propensity: np.ndarray | None = None,
    clip: float = 10.0,
):
    """A LightGBM LambdaRank booster on ``features`` (names from :data:`engine.features.FEATURES`).

    ``init``: starting scores of the train and valid rows (boosting continues from another model's
    scores); the logged position is then left to that model.  ``debias`` (default: the config's
    ``position_debias`` for logged data): learn the logged position as a term of its own.  Validation
    rows always get position 0, as serving does, so early stopping measures the ranking that will serve.

    ``method`` (logged data; overrides ``debias``): ``naive`` (clicks as labels), ``position_term`` (the
    additive position term), ``lgbm_position`` (LightGBM's own unbiased lambdarank: the logged positions in the
    Dataset, their bias factors learned with the model), ``pbm_ips`` (each engaged row weighted by the inverse
    of its position's examination propensity ``θ_1 / θ_k``, ``propensity`` from :mod:`finetune.click_model`,
    clipped at ``clip``).  Rows also carry their session's weight (``train.weight``) when any differs from 1."""
    import lightgbm as lgb

    names = list(features)
    if method is not None:
        debias = method == "position_term"
    elif debias is None:
        debias = tcfg.position_debias
    debias = debias and train.logged and init is None
    if debias:
        names.append(POSITION)
    params = lambdarank_params(tcfg, names)
    if debias:
        # position bias: the logged position gets trees of its own (an additive h(position)), so the other
        # features explain what position does not; serving sets it to 0 for every candidate, a constant shift
        params["interaction_constraints"] = [list(range(len(features))), [len(features)]]

    dtrain = train_set(names, train, None if init is None else init[0], method, propensity, clip, init is None)
    valid_sets, callbacks = [], []
    if valid is not None and len(valid.groups):
        dvalid = lgb.Dataset(
            model_inputs(names, valid, serving=True),
            ints(valid.y),
            group=valid.groups,
            reference=dtrain,
            init_score=None if init is None else init[1],
        )
        valid_sets = [dvalid]
        callbacks.append(lgb.early_stopping(tcfg.early_stopping, verbose=False))
    evals: dict = {}
    callbacks.append(lgb.record_evaluation(evals))
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=tcfg.num_rounds,
        valid_sets=valid_sets,
        valid_names=["valid"] if valid_sets else None,
        callbacks=callbacks,
    )
    curve = evals.get("valid", {}).get("ndcg@10", [])
    return booster, curve


def train_set(names, train: Dataset, init, method: str | None, propensity, clip: float, positions: bool = True):
    """The LightGBM Dataset of the training rows: the model's inputs, integer grades, sessions as groups, the
    starting scores ``init``, the row weights of ``method`` and, for ``lgbm_position`` (with ``positions``), the
    logged positions (LightGBM learns their bias factors with the model)."""
    import lightgbm as lgb

    lgb_position = positions and method == "lgbm_position" and train.logged
    position = np.maximum(train.position, 0).astype(np.int32) if lgb_position else None
    return lgb.Dataset(
        model_inputs(names, train),
        ints(train.y),
        group=train.groups,
        feature_name=names,
        free_raw_data=False,
        init_score=init,
        weight=row_weights(train, method, propensity, clip),
        position=position,
    )


def row_weights(d: Dataset, method: str | None, propensity: np.ndarray | None, clip: float) -> np.ndarray | None:
    """The training weight of each row: its session's weight, times the clipped inverse propensity of its
    position for an engaged row under ``pbm_ips``; None when every weight is 1 (LightGBM's default)."""
    w = np.ones(len(d.y)) if d.weight is None else np.asarray(d.weight, dtype=np.float64)
    if method == "pbm_ips" and d.logged:
        if propensity is None:
            raise ValueError("pbm_ips needs the click model's propensities")
        theta = np.asarray(propensity, dtype=np.float64)
        k = np.clip(np.maximum(d.position, 0).astype(np.int64), 0, len(theta) - 1)
        ips = np.minimum(1.0 / np.maximum(theta[k], 1e-12), clip)
        w = w * np.where(d.y > 0, ips, 1.0)
    return None if np.all(w == 1.0) else w


def model_inputs(names: Sequence[str], d: Dataset, serving: bool = False) -> np.ndarray:
    """The input matrix of a model reading ``names`` (a booster's ``feature_name()``): the engine's features,
    and the logged position where the model has the position term (0 for every row when ``serving``)."""
    X = d.X[:, [FEATURES.index(f) for f in names if f != POSITION]]
    if POSITION not in names:
        return X
    return np.column_stack([X, np.zeros(len(X)) if serving else np.maximum(d.position, 0.0)])


def fit_base(train: Dataset, valid: Dataset | None, tcfg, features: Sequence[str], progress: bool = True, **debias):
    """:func:`fit`, with and without the position term when the data is logged and ``position_debias`` is on,
    keeping the one whose validation NDCG@10 (position 0 for every row, as serving) is higher.  Whether
    the position term helps depends on the logging policy: where the shown order is nearly the relevance
    order (little exploration), position takes over what relevance should explain.  Returns
    ``(booster, curve, choice)``, ``choice`` the two validation NDCG@10 (None when there was no choice).
    ``debias``: :func:`fit`'s ``method``, ``propensity`` and ``clip``; a given ``method`` is fitted alone."""
    booster, curve = fit(train, valid, tcfg, features, progress, **debias)
    if debias.get("method") or POSITION not in booster.feature_name() or not curve:
        return booster, curve, None
    plain, curve_plain = fit(train, valid, tcfg, features, progress, debias=False)
    choice = {"with_position": round(float(max(curve)), 4), "without": round(float(max(curve_plain)), 4)}
    if max(curve_plain) >= max(curve):
        return plain, curve_plain, choice
    return booster, curve, choice
