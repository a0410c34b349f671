"""A retrain's delta booster: new trees on the service's logged searches, boosted from the serving ranker's scores
(:func:`fit_on_top`), the number of trees chosen by the inverse-propensity-weighted DCG of the validation
sessions.  `make retrain` (:mod:`finetune.retrain`) fits one per debiasing method.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from finetune.ranker_fit import POSITION, lambdarank_params, model_inputs, train_set
from finetune.ranker_sessions import Dataset


def group_scores(ranker, d: Dataset) -> np.ndarray:
    """The ranker's scores of a dataset's rows, one session at a time (a z-score mix standardizes per query),
    the logged position unknown (0) as when serving."""
    X = d.X
    out = np.empty(len(X))
    start = 0
    for n in d.groups:
        out[start : start + n] = ranker.score(X[start : start + n], 1.0, warm=True)[0]
        start += n
    return out


def fit_on_top(
    serving,
    data: Dataset,
    tcfg,
    method: str,
    propensity=None,
    clip: float = 10.0,
    features: Sequence[str] = ("query_ctr",),
):
    """A delta booster over non-personal ``features`` (by default the query's clicks) boosted on logged sessions from
    the serving ranker's scores (LightGBM ``init_score``), stopped early on the last ``valid_fraction`` of
    sessions: queries without traffic keep the serving order, those with traffic move as their clicks say.  The
    result is the serving ranker plus the delta (:meth:`engine.ranker.Ranker.with_delta`).  ``method`` as
    :func:`fit`.  Returns ``(Ranker, the validation Dataset)``."""
    import lightgbm as lgb

    from engine.features import NON_PERSONAL
    from finetune.counterfactual import debiased_dcg

    n = len(data.groups)
    if n < 10:
        raise ValueError(f"only {n} logged sessions have an engagement among the engine's candidates")
    n_valid = max(1, int(n * tcfg.valid_fraction))
    train, valid = data.split(n - n_valid)
    valid = valid.shuffled(tcfg.seed)
    bad = [f for f in features if f not in NON_PERSONAL]
    if bad:
        raise ValueError(f"finetune.retrain.delta_features: {bad} are not among {list(NON_PERSONAL)}")
    names = list(features) + ([POSITION] if method == "position_term" and train.logged else [])
    init_train, init_valid = group_scores(serving, train), group_scores(serving, valid)
    params = lambdarank_params(tcfg, names)
    if POSITION in names:
        params["interaction_constraints"] = [list(range(len(names) - 1)), [len(names) - 1]]
    dtrain = train_set(names, train, init_train, method, propensity, clip)
    delta = lgb.train(params, dtrain, num_boost_round=tcfg.num_rounds)
    # how many trees: the best inverse-propensity-weighted DCG@10 of the validation sessions (their click labels
    # are as biased as the training ones: LightGBM's own NDCG would stop where the logged order is best).  Ties go
    # to more trees: that DCG moves only when an order among the few validation sessions changes, so a flat
    # stretch says the validation cannot tell, while the training lists still gain; measured on WenTian
    # (`make bench-loop`, 4 sessions per query): the first of the tied counts (40) +0.092 MRR@10, the last +0.102
    theta = np.ones(1) if propensity is None else np.asarray(propensity, dtype=np.float64)
    Xv = model_inputs(names, valid, serving=True)
    grid = sorted({k for k in (1, 5, 10, 20, 40, 80, 160, 320, tcfg.num_rounds) if k <= delta.current_iteration()})
    curve = {k: debiased_dcg(valid, init_valid + delta.predict(Xv, num_iteration=k), theta, clip) for k in grid}
    trees = max(grid, key=lambda k: (round(curve[k], 6), k))
    card = {
        **serving.card,
        "form": f"the serving ranker + a delta booster of {trees} trees on logged searches"
        + (f" (delta {len(serving.deltas) + 1})" if serving.deltas else ""),
        "sessions": n,
        "train_sessions": n - n_valid,
        "valid_sessions": n_valid,
        "rows": int(len(data.y)),
        "delta_features": names,
        "delta_best_iteration": trees,
        "valid_debiased_dcg@10": {k: round(v, 4) for k, v in curve.items()},
        "valid_debiased_dcg@10_serving": round(debiased_dcg(valid, init_valid, theta, clip), 4),
        "delta_importance_gain": dict(zip(names, delta.feature_importance("gain").round(2).tolist())),
        "training": dataclasses.asdict(tcfg),
        "point_in_time": "profiles, product counts and query clicks from events strictly before each search",
    }
    delta = lgb.Booster(model_str=delta.model_to_string(num_iteration=trees))  # the trees kept, nothing after
    return serving.with_delta(delta, names, card), valid
