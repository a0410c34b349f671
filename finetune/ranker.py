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
- **Staged** (click logs with users): the personal features in a booster of their own on top
  (:mod:`finetune.ranker_personal`), shipped only where cross-validation over every session vouches for it.
  The LightGBM fitting itself is :mod:`finetune.ranker_fit`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.features import FEATURES, PERSONAL, ranker_features
from finetune.ranker_fit import POSITION, fit_base, fit_cv
from finetune.ranker_sessions import Dataset, PointInTime, Session, build_dataset, candidate_cache


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
    rows = None
    if pit is not None and any(s.shown and s.user is not None for s in sessions):
        from finetune.taste_fit import TasteRows

        rows = TasteRows(engine.facets(), engine.cfg.personal.taste_half_life_days * 86400.0)
    data = build_dataset(engine, sessions, pit, cands, engine.cfg.personal.ctr_prior, progress, collect=rows)
    ranker, _ = fit_ranker(engine, data, tcfg, features, cv=pit is None, description=description, t0=t0)
    if rows is not None and len(rows) and tcfg.taste and tcfg.staged and ranker.booster is not None:
        from finetune.taste_fit import fit_taste, personal_on_taste

        ranker.taste, ranker.card["taste_check"] = fit_taste(
            ranker, rows, pit.profiles, tcfg.valid_fraction, tcfg.personal_min_z, tcfg.seed
        )
        if ranker.taste is not None:  # h again, on top of the taste: only what the taste model does not read
            ranker = personal_on_taste(ranker, data, rows, tcfg)
    ranker.save(out)
    return ranker.card


def _fit_staged(train: Dataset, valid: Dataset, data: Dataset, tcfg, features: Sequence[str], progress, **debias):
    """``g`` on ``train`` (stopped early on ``valid``), then the personal booster ``h`` with its check
    (:mod:`finetune.ranker_personal`: cross-validated over every session, or on ``valid`` alone); ``h`` is
    None when the check does not vouch for it.  Returns ``(g, h, curve of g, curve of g + h, position choice,
    check)``."""
    from finetune.ranker_personal import fit_personal_cv, fit_staged, personal_gain, shrinkage

    has_valid = len(valid.groups) > 0
    if tcfg.personal_folds >= 2 and len(data.groups) >= 2 * tcfg.personal_folds:
        g, curve_g, choice = fit_base(
            train, valid if has_valid else None, tcfg, [f for f in features if f not in PERSONAL], progress, **debias
        )
        h, curve, check = fit_personal_cv(g, data, tcfg, [f for f in features if f in PERSONAL], **debias)
    elif has_valid:
        g, h, curve_g, curve, choice = fit_staged(train, valid, tcfg, features, progress, **debias)
        check = personal_gain(g, h, valid)
    else:
        g, h, curve_g, curve, choice = fit_staged(train, None, tcfg, features, progress, **debias)
        return g, h, curve_g, curve, choice, None
    # shrink the boost by how sure the unseen sessions are of it (positive-part James-Stein: 1 − 1/z²); not
    # significantly better (z ≤ personal_min_z, one-sided 5%): dropped, never hurt
    check["min_z"] = tcfg.personal_min_z
    check["scale"] = shrinkage(check, tcfg.personal_min_z)
    check["kept"] = check["scale"] > 0
    if not check["kept"]:
        h, curve = None, curve_g
    return g, h, curve_g, curve, choice, check


def cross_encoder_card(engine) -> dict:
    """Which cross-encoder's scores a ranker reads (the engine refuses a ranker trained on another's)."""
    ce = engine.cross_encoder()
    return {"path": str(ce.path), "fingerprint": ce.fingerprint()}


def candidates_card(engine) -> dict:
    """How the candidates a ranker learnt from were gathered (the engine refuses a ranker whose stage scores were
    looked up otherwise: ``rerank.lookup_depth``; ``base_cosine``: whether the zero-shot encoder's features were
    computed)."""
    r = engine.cfg.rerank
    return {
        "depth": r.depth,
        "lookup_depth": r.lookup_depth,
        "first_stage": r.first_stage,
        "base_cosine": r.base_cosine,
    }


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
    features = ranker_features(features, engine.cfg.rerank.base_cosine)  # what the engine computes
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
        booster, h, curve_g, curve, choice, check = _fit_staged(train, valid, data, tcfg, features, progress, **debias)
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
    card["candidates"] = candidates_card(engine)
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
