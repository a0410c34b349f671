"""Training the final ranker: LightGBM LambdaRank over point-in-time features of training sessions.

- **Sessions.**  From a click log: one session per user and query, cut where
  the user's events on that query pause for more than 30 minutes; its labels
  are the best gain per product (click 1, add to cart 2, purchase 3).  From
  judged pairs: one session per query, no user, the judged products as
  labels.
- **Point in time.**  Events are replayed in time order (:class:`PointInTime`):
  each session sees the user's profile and the products' counts built only
  from events strictly before the session started, never its own clicks or
  later ones (tested against leakage).
- **Rows.**  For each session the engine's own candidates (union of the bm25
  and dense top ``rerank.depth``, with cross-encoder scores: the same
  :meth:`SearchEngine.candidate_sets` that serves queries, cached per query
  text) with :mod:`engine.features`.  In a logged session only the
  candidates the user was shown (impressions) are rows: label = best gain,
  0 for shown and ignored; candidates never shown are unknown, not
  negatives.  Judged pairs (no impressions): every candidate, 0 unless
  judged.  Sessions without a positive and a negative teach nothing and are
  skipped.
- **Model.**  LambdaRank (NDCG@10), the last ``valid_fraction`` of sessions by
  time stops boosting early (judged pairs, which have no time order, may
  instead choose the number of trees by ``cv_folds``-fold cross-validation
  and fit on every session: :func:`fit_cv`); the user-affinity features are constrained to
  be monotone increasing (more affinity never lowers a score).  Saved as
  ``model.txt`` + ``features.json`` + ``model_card.json``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.features import FEATURES, PERSONAL
from finetune.ranker_sessions import Dataset, PointInTime, Session, build_dataset, candidate_cache

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


def _ints(y: np.ndarray) -> np.ndarray:
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
        model_inputs(names, data), _ints(data.y), group=data.groups, feature_name=names, free_raw_data=False
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
            _ints(valid.y),
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
        _ints(train.y),
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


def fit_staged(train: Dataset, valid: Dataset | None, tcfg, features: Sequence[str], progress: bool = True, **debias):
    """``g`` over the non-personal features (and the logged position), then ``h`` over the personal ones,
    boosted from ``g``'s scores: ``f = g + h``.  Each stops early on its own, so the weaker personal
    signal is not cut short by when the relevance part stops improving.  Returns
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


def personal_gain(g, h, valid: Dataset) -> dict:
    """Does ``h`` help on the validation sessions?  Per-session NDCG@10 of ``g + h`` minus ``g``: mean, its
    standard error and z (mean over standard error)."""
    base = g.predict(model_inputs(g.feature_name(), valid, serving=True))
    both = base + h.predict(model_inputs(h.feature_name(), valid))
    d = ndcg_per_group(valid.y, both, valid.groups) - ndcg_per_group(valid.y, base, valid.groups)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    mean = float(d.mean()) if len(d) else 0.0
    return {
        "sessions": int(len(d)),
        "ndcg@10_diff": round(mean, 4),
        "se": round(se, 4),
        "z": round(mean / se, 2) if se > 0 else 0.0,
    }


def train_ranker(
    engine,
    sessions: Sequence[Session],
    pit: PointInTime | None,
    tcfg,
    out,
    features: Sequence[str] = FEATURES,
    cands: dict | None = None,
    progress: bool = True,
    description: str = "",
    cache_dir: Path | None = None,
) -> dict:
    """Build the dataset, fit, save the ranker to ``out``; returns its model card."""
    t0 = time.perf_counter()
    cands = (
        cands
        if cands is not None
        else candidate_cache(engine, [s.query for s in sessions], progress=progress, cache_dir=cache_dir)
    )
    data = build_dataset(engine, sessions, pit, cands, engine.cfg.personal.ctr_prior, progress)
    ranker, _ = fit_ranker(engine, data, tcfg, features, cv=pit is None, description=description, t0=t0)
    ranker.save(out)
    return ranker.card


def cross_encoder_card(engine) -> dict:
    """Which cross-encoder's scores a ranker reads (the engine refuses a ranker trained on another's)."""
    ce = engine.cross_encoder()
    return {"path": str(ce.path), "fingerprint": ce.fingerprint()}


def fit_ranker(
    engine,
    data: Dataset,
    tcfg,
    features: Sequence[str] = FEATURES,
    cv: bool = False,
    description: str = "",
    t0: float | None = None,
    progress: bool = True,
    **debias,
):
    """Fit the ranker on a built dataset (the last ``valid_fraction`` of sessions stop the boosting; ``cv``:
    judged pairs may cross-validate instead).  Returns ``(Ranker, the validation Dataset)``; ``debias`` as
    :func:`fit_base`."""
    from engine.ranker import Ranker

    t0 = time.perf_counter() if t0 is None else t0
    n = len(data.groups)
    if n < 10:
        raise ValueError(
            f"only {n} training sessions have a positive among the engine's candidates; the ranker needs more data"
        )
    cv = cv and tcfg.cv_folds > 1  # judged pairs: no time order, every session can validate
    n_valid = max(1, int(n * tcfg.valid_fraction)) if tcfg.valid_fraction > 0 and not cv else 0
    train, valid = data.split(n - n_valid)
    valid = valid.shuffled(tcfg.seed)  # measured as served: ties must not inherit the logged order
    pcols = [FEATURES.index(f) for f in features if f in PERSONAL]
    knows_users = bool(pcols) and bool(np.any(data.X[:, pcols] != 0))
    if not knows_users:  # no session knows its user (judged pairs): personal features would be constant
        features = [f for f in features if f not in PERSONAL]
    h = None
    check = None
    if tcfg.staged and knows_users and len(pcols) < len(features):
        booster, h, curve_g, curve, choice = fit_staged(
            train, valid if n_valid else None, tcfg, features, progress, **debias
        )
        if n_valid:
            check = personal_gain(booster, h, valid)
            # shrink the boost by how sure the held-out sessions are of it (positive-part James-Stein:
            # 1 − 1/z²); not significantly better (z ≤ personal_min_z, one-sided 5%): dropped, never hurt
            z = check["z"]
            check["min_z"] = tcfg.personal_min_z
            check["scale"] = round(max(0.0, 1.0 - 1.0 / z**2), 3) if z > max(tcfg.personal_min_z, 1.0) else 0.0
            check["kept"] = check["scale"] > 0
            if not check["kept"]:
                h, curve = None, curve_g
    elif cv:
        booster, curve = fit_cv(data, tcfg, features)
        choice = curve_g = None
    else:
        booster, curve, choice = fit_base(train, valid if n_valid else None, tcfg, features, progress, **debias)
        curve_g = None
    importance = dict(zip(booster.feature_name(), booster.feature_importance("gain").round(2).tolist()))
    if h is not None:
        importance.update(zip(h.feature_name(), h.feature_importance("gain").round(2).tolist()))
    card = {
        "model": "LightGBM LambdaRank (NDCG@10)",
        "data": description,
        "sessions": n,
        "train_sessions": n - n_valid,
        "valid_sessions": n_valid,
        "rows": int(len(data.y)),
        "features": booster.feature_name() + (h.feature_name() if h is not None else []),
        "personal_features": h.feature_name()
        if h is not None
        else [f for f in booster.feature_name() if f in PERSONAL],
        "best_iteration": int(booster.best_iteration or booster.current_iteration()),
        "valid_ndcg@10": round(float(max(curve)), 4) if curve else None,
        "validation": (
            f"{tcfg.cv_folds}-fold cross-validation over the sessions: rounds where the folds' mean "
            "NDCG@10 peaked, then one booster on every session"
        )
        if cv
        else (f"the last {n_valid} sessions stop the boosting early" if n_valid else "none"),
        "form": "staged: g(non-personal) + h(personal)" if h is not None else "one booster",
        "importance_gain": importance,
        "minutes": round((time.perf_counter() - t0) / 60, 2),
        "training": dataclasses.asdict(tcfg),
        "point_in_time": "profiles and product counts from events strictly before each session",
    }
    card["cross_encoder"] = cross_encoder_card(engine)
    if check is not None:
        card["personal_check"] = check
    if h is not None:
        card["personal_best_iteration"] = int(h.best_iteration or h.current_iteration())
        card["valid_ndcg@10_non_personal"] = round(float(max(curve_g)), 4) if curve_g else None
    if choice:
        card["position_choice"] = choice  # validation NDCG@10 as served, with and without
    if POSITION in booster.feature_name():
        card["position_debias"] = "the logged position trained as an additive term; 0 for every candidate at serving"
    ranker = Ranker(
        booster,
        booster.feature_name(),
        card,
        h,
        h.feature_name() if h is not None else None,
        check["scale"] if h is not None and check is not None else 1.0,
    )
    return ranker, valid
